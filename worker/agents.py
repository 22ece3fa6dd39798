"""The agent: decode -> classify -> encode -> send, a batch at a time, acked only after delivery."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TYPE_CHECKING, Any, cast

import faust
from faust.types import EventT, Message

from worker import faust_ext
from worker.outbox import Outbox
from worker.processing import DEAD_LETTER, DECISION, TOMBSTONE, Outcome

if TYPE_CHECKING:
    from worker.app import Runtime

log = logging.getLogger("worker.agents")


def register_agent(
    app: faust.App, runtime: Runtime, input_topic: faust.TopicT, decisions_topic: faust.TopicT,
    dead_letter_topic: faust.TopicT, batch_max: int,
) -> faust.types.AgentT:
    decisions_name = decisions_topic.get_topic_name()
    dead_letter_name = dead_letter_topic.get_topic_name()
    transactions = faust_ext.Transactions(app, input_topic.get_topic_name())

    # Under at_least_once, decisions and state changes go into aiokafka batches directly (worker/outbox.py); dead
    # letters (rare, up to 8 MiB) and everything under exactly_once go through Faust's producer one by one.
    outbox = Outbox(app.producer._ensure_producer, app.producer.partitioner)  # noqa: SLF001 - Faust's own accessor

    async def process_and_send(events: Sequence[EventT]) -> tuple[list[Awaitable[Any]], list[Outcome]]:
        # Under exactly_once each record joins the transaction of the input partition it comes from.
        exactly_once = app.in_transaction
        send = app.producer.send
        process = runtime.processor.process
        add = outbox.add
        now = time.time()
        deliveries = []
        outcomes = []
        for event in events:
            message = event.message
            outcome = process(message.key, message.value, message.topic, message.partition, message.offset, now)
            if exactly_once:
                target = dead_letter_name if outcome.kind is DEAD_LETTER else decisions_name
                deliveries.append(await transactions.send(message.partition, target, outcome.key, outcome.value))
            elif outcome.kind is DEAD_LETTER:
                deliveries.append(await send(dead_letter_name, outcome.key, outcome.value, None, None, None))
            else:
                await add(decisions_name, outcome.key, outcome.value)
            outcomes.append(outcome)
        store = runtime.store
        if store is not None:
            if exactly_once:
                deliveries.extend(await store.send_writes(transactions.send_to_own_partition))
            else:
                changelog = store.changelog_topic
                for partition, key, value in store.take_writes():
                    await add(changelog, key, value, partition)
        if not exactly_once:
            deliveries.extend(await outbox.flush())
        return deliveries, outcomes

    async def confirm(
        stream: faust.StreamT, batch: Sequence[tuple[EventT, Any]], deliveries: list[Awaitable[Any]],
        outcomes: list[Outcome], previous: asyncio.Future[None] | None, gate: faust_ext.TransactionGate | None,
    ) -> None:
        """Ack a batch once the broker has acknowledged all of its output, and after the batch before it."""
        try:
            if previous is not None:
                await previous
            await asyncio.gather(*deliveries)
            delivered = time.monotonic()
            for event, sensor_state in batch:
                ack(stream, event, sensor_state)
        except BaseException as exc:
            if gate is not None:
                gate.fail(exc)
            raise
        finally:
            if gate is not None:
                gate.leave()
        record_metrics(runtime, [event for event, _ in batch], outcomes, delivered)

    @app.agent(input_topic, name="decide")
    async def decide(stream: faust.StreamT) -> None:
        # While earlier batches wait for the broker's acknowledgement, the next is processed; each
        # batch is acked after its own delivery and after the batch before it, never earlier. Waiting
        # here for the previous batch instead cost ~30% of throughput: the producer sends while we
        # compute. What bounds the batches awaiting delivery is the producer's accumulator (its
        # send() waits when full) and the stream buffer the batches come from.
        # Under exactly_once a batch holds the commit gate from its first send until it is acked.
        gate = cast(faust_ext.Consumer, app.consumer).gate if app.in_transaction else None
        in_flight: asyncio.Future[None] | None = None
        try:
            async for batch in event_batches(stream, batch_max):
                if in_flight is not None and in_flight.done():
                    in_flight.result()  # a failed delivery stops the agent before more is sent
                if gate is not None:
                    await gate.enter()
                try:
                    deliveries, outcomes = await process_and_send([event for event, _ in batch])
                except BaseException as exc:
                    outbox.discard()
                    if gate is not None:
                        gate.fail(exc)
                        gate.leave()
                    raise
                in_flight = asyncio.ensure_future(confirm(stream, batch, deliveries, outcomes, in_flight, gate))
        finally:
            if in_flight is not None:
                await in_flight

    return decide


async def event_batches(stream: faust.StreamT, batch_max: int) -> AsyncIterator[list[tuple[EventT, Any]]]:
    """Whole batches from the agent's channel queue: whatever is waiting, up to ``batch_max``, without delay.

    This is what Faust's Stream iterator (``faust/_cython/streams.pyx``) does one
    event at a time, done per batch: the events come from the same queue the
    conductor fills; each is tracked as unacked (so a rebalance or shutdown waits
    for it) and reported to the sensors on the way in, and again in ``ack`` on the
    way out. Events of an old consumer generation, or arriving while flow control
    is suspended for a rebalance, are dropped, and the consumer fetches them again
    from the committed offset: see ``forget`` for the one place this differs from Faust.
    """
    app = stream.app
    channel = aiter(stream.channel)  # registers the topic with the conductor, as iterating the stream would
    queue = channel.queue
    get, get_nowait, empty = queue.get, queue.get_nowait, queue.empty
    flow_control = app.flow_control
    acking_topics = app.topics.acking_topics
    add_unacked = app.consumer._unacked_messages.add  # noqa: SLF001 - what the Stream iterator itself uses
    sensors = app.sensors
    on_message_in, on_event_in = sensors.on_message_in, sensors.on_stream_event_in
    while True:
        try:
            events = [await get()]
            while len(events) < batch_max and not empty():
                events.append(get_nowait())
        except StopAsyncIteration:
            return  # the channel was closed (the agent is stopping), as the Stream iterator ends on it
        batch = []
        stale = 0
        for event in events:
            message = event.message
            if not flow_control.is_active() or message.generation_id != app.consumer_generation_id:
                forget(message)
                stale += 1
                continue
            tp, offset = message.tp, message.offset
            if message.topic in acking_topics and not message.tracked:
                message.tracked = True
                add_unacked(message)
                on_message_in(tp, offset, message)
            batch.append((event, on_event_in(tp, offset, stream, event)))
        if stale:
            log.info(
                "skipped %d events fetched before a rebalance; they are fetched again", stale,
                extra={"event": "stale_generation_skipped", "count": stale},
            )
        if batch:
            yield batch


def forget(message: Message) -> None:
    """Drop a message fetched before a rebalance without marking its offset as done.

    Faust's Stream iterator acks such a message, which puts its offset into the
    consumer's acked list although it was never processed. Right after a
    rebalance the consumer has no committed offset for the partition yet, so its
    gap check is off and the next commit (the one on shutdown, say) moves the
    group's offset past those records: a worker stopped during table recovery
    committed 41-291 records of one partition that nobody had decided. Marking
    the message acked here, without telling the consumer, means nothing acks it
    later; it is fetched again from the committed offset like every other stale
    message.
    """
    message.acked = True


def ack(stream: faust.StreamT, event: EventT, sensor_state: Any) -> None:
    """Ack an event and report it to the sensors, as the Stream iterator does after each event."""
    message = event.message
    last_stream_to_ack = event.ack()
    sensors = stream.app.sensors
    sensors.on_stream_event_out(message.tp, message.offset, stream, event, sensor_state)
    if last_stream_to_ack:
        sensors.on_message_out(message.tp, message.offset, message)


def record_metrics(runtime: Runtime, events: Sequence[EventT], outcomes: Sequence[Outcome], delivered: float) -> None:
    """Count per batch, not per event: one label lookup per distinct (decision, cluster) in the batch."""
    metrics = runtime.metrics
    decisions: Counter[tuple[str, str]] = Counter()
    dead_letters: Counter[str] = Counter()
    tombstones = 0
    for event, outcome in zip(events, outcomes):
        if outcome.kind is DECISION:
            decisions[(outcome.decision or "", outcome.cluster or "none")] += 1
        elif outcome.kind is TOMBSTONE:
            tombstones += 1
        else:
            code = outcome.error_code or ""
            dead_letters[code] += 1
            message = event.message
            log.warning(
                "dead letter %s from %s[%d]@%d: %s",
                code, message.topic, message.partition, message.offset, outcome.error_message,
                extra={
                    "event": "dead_letter", "code": code,
                    "source": {"topic": message.topic, "partition": message.partition, "offset": message.offset},
                },
            )
    for (decision, cluster), count in decisions.items():
        metrics.decisions.labels(decision, cluster).inc(count)
    for code, count in dead_letters.items():
        metrics.dead_letters.labels(code).inc(count)
    if tombstones:
        metrics.tombstones.inc(tombstones)
    metrics.latency.observe_many(
        delivered - time_in for event in events if (time_in := event.message.time_in) is not None
    )
    metrics.batch_size.observe(len(events))
