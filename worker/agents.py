"""The agent: decode -> classify -> encode -> send, a batch at a time, acked only after delivery."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import faust
from faust.types import EventT

from worker.processing import DEAD_LETTER, DECISION, TOMBSTONE

if TYPE_CHECKING:
    from worker.app import Runtime

log = logging.getLogger("worker.agents")


def register_agent(
    app: faust.App, runtime: Runtime, input_topic: faust.TopicT, decisions_topic: faust.TopicT,
    dead_letter_topic: faust.TopicT, batch_max: int, batch_within: float,
) -> faust.types.AgentT:
    decisions_name = decisions_topic.get_topic_name()
    dead_letter_name = dead_letter_topic.get_topic_name()

    def sender() -> Any:
        # Under exactly_once the send must join the transaction of the source partition.
        return app.consumer.transactions.send if app.in_transaction else app.producer.send

    async def handle_batch(events: Sequence[EventT]) -> None:
        send = sender()
        process = runtime.processor.process
        now = time.time()
        pending = []
        outcomes = []
        for event in events:
            message = event.message
            outcome = process(message.key, message.value, message.topic, message.partition, message.offset, now)
            target = dead_letter_name if outcome.kind is DEAD_LETTER else decisions_name
            pending.append(await send(target, outcome.key, outcome.value, None, None, None))
            outcomes.append(outcome)
        # Delivery first: take_events acks (and so lets Faust commit) only after this returns.
        await asyncio.gather(*pending)
        delivered = time.monotonic()
        record_metrics(runtime, events, outcomes, delivered)

    @app.agent(input_topic, name="decide")
    async def decide(stream: faust.StreamT) -> None:
        async for events in stream.take_events(batch_max, within=batch_within):
            await handle_batch(events)

    return decide


def record_metrics(runtime: Runtime, events: Sequence[EventT], outcomes: Sequence[Any], delivered: float) -> None:
    """Count per batch, not per event: one label lookup per distinct (decision, cluster) in the batch."""
    metrics = runtime.metrics
    decisions: Counter[tuple[str, str]] = Counter()
    dead_letters: Counter[str] = Counter()
    tombstones = 0
    for event, outcome in zip(events, outcomes):
        if outcome.kind is DECISION:
            decisions[(outcome.decision, outcome.cluster or "none")] += 1
        elif outcome.kind is TOMBSTONE:
            tombstones += 1
        else:
            dead_letters[outcome.error_code] += 1
            message = event.message
            log.warning(
                "dead letter %s from %s[%d]@%d: %s",
                outcome.error_code, message.topic, message.partition, message.offset, outcome.error_message,
                extra={
                    "event": "dead_letter", "code": outcome.error_code,
                    "source": {"topic": message.topic, "partition": message.partition, "offset": message.offset},
                },
            )
    for (decision, cluster), count in decisions.items():
        metrics.decisions.labels(decision, cluster).inc(count)
    for code, count in dead_letters.items():
        metrics.dead_letters.labels(code).inc(count)
    if tombstones:
        metrics.tombstones.inc(tombstones)
    observe = metrics.latency.observe
    for event in events:
        time_in = event.message.time_in
        if time_in is not None:
            observe(max(0.0, delivered - time_in))
    metrics.batch_size.observe(len(events))
