"""The agents: decode -> classify -> encode -> send, a batch at a time, acked only after delivery."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, cast

import faust
from faust.types import EventT

from worker.kafka.batches import ack_batch, drop_stale, event_batches
from worker.kafka.consumer import Consumer
from worker.kafka.outbox import Outbox
from worker.kafka.transactions import TransactionGate, Transactions
from worker.stream.processing import DEAD_LETTER, DECISION, FORWARD, TOMBSTONE, Outcome
from worker.stream.runtime import Runtime
from worker.stream.state_store import Write, changelog_offsets

log = logging.getLogger("worker.agents")
TRACE_CONTEXT_HEADERS = ("traceparent", "tracestate")  # https://www.w3.org/TR/trace-context/
# On a repartitioned record: where the event was read from the input ("partition:offset"), for the decision's source.
ORIGIN_HEADER = "compliance-origin"

Headers = list[tuple[str, bytes | None]]


class Sent(NamedTuple):
    """What a batch sent, for its confirmation: delivery futures, outcomes, state changes and their changelog sends."""

    deliveries: list[Awaitable[Any]]
    outcomes: list[Outcome]
    writes: list[Write]
    changelog_sent: list[tuple[int, Any, int]]  # (partition, delivery, records) of the state's changelog


def register_agents(
    app: faust.App, runtime: Runtime, input_topic: faust.TopicT, decisions_topic: faust.TopicT,
    dead_letter_topic: faust.TopicT, batch_max: int, repartition_topic: faust.TopicT | None = None,
) -> list[faust.types.AgentT]:
    """The decide agent on the input; with a ``repartition_topic`` (KEY_MISMATCH=repartition), a route agent on the
    input that sends every event on keyed by its product id, and the decide agent on that topic."""
    if repartition_topic is None:
        return [register_decide(app, runtime, input_topic, decisions_topic, dead_letter_topic, batch_max, None)]
    origin_topic = input_topic.get_topic_name()
    return [
        register_route(app, runtime, input_topic, repartition_topic, dead_letter_topic, batch_max),
        register_decide(app, runtime, repartition_topic, decisions_topic, dead_letter_topic, batch_max, origin_topic),
    ]


def register_decide(
    app: faust.App, runtime: Runtime, source_topic: faust.TopicT, decisions_topic: faust.TopicT,
    dead_letter_topic: faust.TopicT, batch_max: int, origin_topic: str | None,
) -> faust.types.AgentT:
    """Decide each event of ``source_topic``; its product's state is in the partition it is read from.

    With ``origin_topic`` the events come from the repartition topic: the decision's source is the input
    record the ORIGIN_HEADER names, and a dead letter carries the input's headers without it.
    """
    decisions_name = decisions_topic.get_topic_name()
    dead_letter_name = dead_letter_topic.get_topic_name()
    transactions = Transactions(app, source_topic.get_topic_name())
    # Under at_least_once, decisions and state changes go into aiokafka batches directly (worker/kafka/outbox.py); dead
    # letters (rare, up to 8 MiB) and everything under exactly_once go through Faust's producer one by one.
    outbox = Outbox(app.producer._ensure_producer, app.producer.partitioner)  # noqa: SLF001 - Faust's own accessor
    forwarded = header_filter(runtime.settings.forward_headers)

    async def process_and_send(events: Sequence[EventT]) -> Sent:
        # Under exactly_once each record joins the transaction of the partition it was read from.
        exactly_once = app.in_transaction
        send = app.producer.send
        process = runtime.processor.process
        append, add = outbox.append, outbox.add
        now = time.time()
        deliveries: list[Awaitable[Any]] = []
        outcomes = []
        store = runtime.store
        writes: list[Write] = []
        try:
            for event in events:
                message = event.message
                headers = message.headers
                if origin_topic is None:
                    outcome = process(message.key, message.value, message.topic, message.partition, message.offset, now)
                else:
                    partition, offset, headers = origin(headers, message.partition, message.offset)
                    outcome = process(message.key, message.value, origin_topic, partition, offset, now, message.partition)
                if headers:  # a dead letter keeps them all, for an exact replay; a decision carries the forwarded ones
                    headers = list(headers) if outcome.kind is DEAD_LETTER else forwarded(headers)
                if exactly_once:
                    target = dead_letter_name if outcome.kind is DEAD_LETTER else decisions_name
                    deliveries.append(
                        await transactions.send(message.partition, target, outcome.key, outcome.value, headers=headers)
                    )
                elif outcome.kind is DEAD_LETTER:
                    deliveries.append(await send(dead_letter_name, outcome.key, outcome.value, None, None, headers))
                elif not append(decisions_name, outcome.key, outcome.value, None, headers):
                    await add(decisions_name, outcome.key, outcome.value, headers=headers)
                outcomes.append(outcome)
            if store is not None:
                writes = store.take_writes()
            return Sent(deliveries, outcomes, writes, await send_changelog(writes, deliveries, exactly_once))
        except BaseException:
            if store is not None:
                store.discard(writes)  # never acked: these events are decided again, their changes must not linger
            raise

    async def send_changelog(
        writes: list[Write], deliveries: list[Awaitable[Any]], exactly_once: bool,
    ) -> list[tuple[int, Any, int]]:
        """Send the batch's state changes; then, under at_least_once, flush the outbox (outputs and changes alike)."""
        store = runtime.store
        changelog_sent: list[tuple[int, Any, int]] = []
        if store is not None and writes:
            if exactly_once:
                sent = await store.send(writes, transactions.send_to_own_partition)
                deliveries.extend(sent)
                changelog_sent = [(partition, delivery, 1) for (partition, _, _), delivery in zip(writes, sent)]
            else:
                changelog = store.changelog_topic
                append = outbox.append
                for partition, key, value in writes:
                    if not append(changelog, key, value, partition):
                        await outbox.add(changelog, key, value, partition)
        if not exactly_once:
            deliveries.extend(await outbox.flush())
            if store is not None and writes:
                changelog = store.changelog_topic
                changelog_sent = [(p, delivery, n) for topic, p, delivery, n in outbox.sent if topic == changelog]
        return changelog_sent

    return _batch_agent(app, runtime, source_topic, "decide", batch_max, process_and_send, outbox, state=True)


def register_route(
    app: faust.App, runtime: Runtime, input_topic: faust.TopicT, repartition_topic: faust.TopicT,
    dead_letter_topic: faust.TopicT, batch_max: int,
) -> faust.types.AgentT:
    """KEY_MISMATCH=repartition: each input event on to the repartition topic, keyed by its product id.

    As Faust's ``group_by`` does: the producer's partitioner then puts every event of a product on one partition of
    the repartition topic, whatever key the upstream gave it, and the decide agent on that topic keeps the
    product's state there. An event that can never be decided (not JSON, a schema violation...) is dead-lettered
    here, with the input's coordinates; everything else, tombstones included, goes on with all its headers and
    ORIGIN_HEADER naming the input partition and offset.
    """
    repartition_name = repartition_topic.get_topic_name()
    dead_letter_name = dead_letter_topic.get_topic_name()
    transactions = Transactions(app, input_topic.get_topic_name())
    outbox = Outbox(app.producer._ensure_producer, app.producer.partitioner)  # noqa: SLF001 - Faust's own accessor

    async def route_and_send(events: Sequence[EventT]) -> Sent:
        exactly_once = app.in_transaction
        route = runtime.processor.route
        now = time.time()
        deliveries: list[Awaitable[Any]] = []
        outcomes = []
        for event in events:
            message = event.message
            outcome = route(message.key, message.value, message.topic, message.partition, message.offset, now)
            headers: Headers = list(message.headers or ())
            if outcome.kind is FORWARD:
                headers.append((ORIGIN_HEADER, f"{message.partition}:{message.offset}".encode()))
                target = repartition_name
            else:
                target = dead_letter_name
            if exactly_once:
                deliveries.append(
                    await transactions.send(message.partition, target, outcome.key, outcome.value, headers=headers)
                )
            elif outcome.kind is FORWARD:
                if not outbox.append(target, outcome.key, outcome.value, None, headers):
                    await outbox.add(target, outcome.key, outcome.value, headers=headers)
            else:
                deliveries.append(await app.producer.send(target, outcome.key, outcome.value, None, None, headers))
            outcomes.append(outcome)
        if not exactly_once:
            deliveries.extend(await outbox.flush())
        return Sent(deliveries, outcomes, [], [])

    return _batch_agent(app, runtime, input_topic, "route", batch_max, route_and_send, outbox, state=False)


def origin(headers: Sequence[tuple[str, bytes | None]], partition: int, offset: int) -> tuple[int, int, Headers]:
    """The input partition and offset a repartitioned record names, and its headers without that one.

    A record without a readable ORIGIN_HEADER (written to the topic by something else) keeps its own coordinates.
    """
    kept: Headers = []
    for name, value in headers or ():
        if name == ORIGIN_HEADER and value is not None:
            first, _, second = value.partition(b":")
            if first.isdigit() and second.isdigit():
                partition, offset = int(first), int(second)
                continue
        kept.append((name, value))
    return partition, offset, kept


def _batch_agent(
    app: faust.App, runtime: Runtime, topic: faust.TopicT, name: str, batch_max: int,
    handle: Callable[[Sequence[EventT]], Awaitable[Sent]], outbox: Outbox, *, state: bool,
) -> faust.types.AgentT:
    """An agent that hands each batch of ``topic`` to ``handle`` and acks it once what it sent is delivered."""

    async def confirm(
        stream: faust.StreamT, batch: Sequence[tuple[EventT, Any]], sent: Sent,
        previous: asyncio.Future[None] | None, gate: TransactionGate | None,
    ) -> None:
        """Ack a batch once the broker has acknowledged all of its output, and after the batch before it."""
        try:
            if previous is not None:
                await previous
            await asyncio.gather(*sent.deliveries)
            delivered = time.monotonic()
            store = runtime.store
            if sent.writes and store is not None:
                # Before the ack: an acked event's state change is in the store (or, in a transaction, staged for it).
                offsets = changelog_offsets(sent.changelog_sent)
                if gate is None:
                    store.durable(sent.writes, offsets)
                else:
                    store.stage(sent.writes, offsets)
            ack_batch(stream, batch)
        except BaseException as exc:
            if gate is not None:
                gate.fail(exc)
            raise
        finally:
            if gate is not None:
                gate.leave()
        record_metrics(runtime, [event for event, _ in batch], sent.outcomes, delivered, decided=state)

    async def run(stream: faust.StreamT) -> None:
        # While earlier batches wait for the broker's acknowledgement, the next is processed; each
        # batch is acked after its own delivery and after the batch before it, never earlier. Waiting
        # here for the previous batch instead cost ~30% of throughput: the producer sends while we
        # compute. What bounds the batches awaiting delivery is the producer's accumulator (its
        # send() waits when full) and the stream buffer the batches come from.
        # Under exactly_once a batch holds the commit gate from its first send until it is acked.
        consumer = cast(Consumer, app.consumer)
        gate = consumer.gate if app.in_transaction else None
        store = runtime.store
        if state and gate is not None and store is not None:
            topic_name = topic.get_topic_name()
            consumer.on_committed = lambda tps: store.committed(tp.partition for tp in tps if tp.topic == topic_name)
        in_flight: asyncio.Future[None] | None = None
        try:
            async for batch in event_batches(stream, batch_max):
                if in_flight is not None and in_flight.done():
                    in_flight.result()  # a failed delivery stops the agent before more is sent
                if gate is not None:
                    await gate.enter()
                    batch = drop_stale(stream, batch)  # a rebalance may have begun while it waited
                    if not batch:
                        gate.leave()
                        continue
                try:
                    sent = await handle([event for event, _ in batch])
                except BaseException as exc:
                    outbox.discard()
                    if gate is not None:
                        gate.fail(exc)
                        gate.leave()
                    raise
                in_flight = asyncio.ensure_future(confirm(stream, batch, sent, in_flight, gate))
        finally:
            if in_flight is not None:
                await in_flight

    run.__name__ = run.__qualname__ = name
    return app.agent(topic, name=name)(run)


def header_filter(names: Sequence[str]) -> Callable[[Sequence[tuple[str, bytes | None]]], list[Any] | None]:
    """The input headers a decision carries: W3C trace context and the ``FORWARD_HEADERS``, names matched in any case."""
    wanted = frozenset(name.lower() for name in (*TRACE_CONTEXT_HEADERS, *names))

    def forwarded(headers: Sequence[tuple[str, bytes | None]]) -> list[Any] | None:
        return [(name, value) for name, value in headers if name.lower() in wanted] or None

    return forwarded


def record_metrics(
    runtime: Runtime, events: Sequence[EventT], outcomes: Sequence[Outcome], delivered: float, *, decided: bool = True,
) -> None:
    """Count per batch, not per event: one label lookup per distinct (decision, cluster) in the batch.

    Latency and batch size are the decide agent's (``decided``): a routed batch only counts what it sent on.
    """
    metrics = runtime.metrics
    decisions: Counter[tuple[str, str]] = Counter()
    overridden: Counter[str] = Counter()
    dead_letters: Counter[str] = Counter()
    signals: Counter[str] = Counter()
    tombstones = forwards = 0
    for event, outcome in zip(events, outcomes):
        kind = outcome.kind
        if kind is DECISION:
            decisions[(outcome.decision or "", outcome.cluster or "none")] += 1
            if outcome.overridden:
                overridden[outcome.decision or ""] += 1
            if outcome.signals:
                signals.update(outcome.signals)
        elif kind is FORWARD:
            forwards += 1
        elif kind is TOMBSTONE:
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
    for decision, count in overridden.items():
        metrics.override_decisions.labels(decision).inc(count)
    for signal, count in signals.items():
        metrics.review_signals.labels(signal).inc(count)
    if tombstones:
        metrics.tombstones.inc(tombstones)
    if forwards:
        metrics.repartitioned.inc(forwards)
    if not decided:
        return
    metrics.latency.observe_many(
        delivered - time_in for event in events if (time_in := event.message.time_in) is not None
    )
    metrics.batch_size.observe(len(events))
