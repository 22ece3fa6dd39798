"""Faust's Stream iterator, done a batch at a time: the agent's events in whole batches, acked and reported as Faust does."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust
from faust.types import EventT, Message
from faust.types.tuples import ConsumerMessage, ack_lock
from mode.utils.futures import notify

log = logging.getLogger("worker.agents")


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
        batch: list[tuple[EventT, Any]] = []
        stale = 0
        monitor = batch_monitor(app)
        if monitor is not None:
            # One report per batch (Faust's per-event sensor calls were ~7% of the main thread's CPU).
            fresh, tracked = [], []
            for event in events:
                message = event.message
                if not flow_control.is_active() or message.generation_id != app.consumer_generation_id:
                    forget(message)
                    stale += 1
                    continue
                if message.topic in acking_topics and not message.tracked:
                    message.tracked = True
                    add_unacked(message)
                    tracked.append(message)
                fresh.append(event)
            if fresh:
                state = monitor.on_batch_in(stream, tracked, fresh)
                batch = [(event, state) for event in fresh]
        else:
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


def drop_stale(stream: faust.StreamT, batch: list[tuple[EventT, Any]]) -> list[tuple[EventT, Any]]:
    """The events of ``batch`` still to be processed after a wait; those a rebalance made stale meanwhile are dropped.

    Under exactly_once a batch ``event_batches`` yielded can wait at the commit gate
    while a rebalance's revoke commits (``Consumer.on_partitions_revoked``, ~400 ms
    in one CI run). Processed after it, its output went into the old transactions
    while the flow was stopped (among them those of a partition another worker took
    over), and its acks reached the consumer after Faust had reset the revoked
    partitions' books; the worker crashed in the recovery that followed (one CI run,
    docs/reliability.md). So what went stale while waiting is dropped as ``event_batches`` drops it
    (``forget``, fetched again from the committed offset), the sensors hear it go,
    and the consumer's wait for unacked events (the revoke's ``wait_empty``) is woken.
    """
    app = stream.app
    active, generation = app.flow_control.is_active(), app.consumer_generation_id
    if active and all(event.message.generation_id == generation for event, _ in batch):
        return batch
    kept: list[tuple[EventT, Any]] = []
    dropped: list[tuple[EventT, Any]] = []
    for item in batch:
        (kept if active and item[0].message.generation_id == generation else dropped).append(item)
    consumer = app.consumer
    unacked = consumer._unacked_messages  # noqa: SLF001 - what the Stream iterator itself uses
    monitor = batch_monitor(app)
    tracked = 0
    for event, sensor_state in dropped:
        message = event.message
        tracked += message.tracked
        forget(message)
        unacked.discard(message)
        if monitor is None or not isinstance(sensor_state, BatchState):
            sensors = app.sensors
            sensors.on_stream_event_out(message.tp, message.offset, stream, event, sensor_state)
            sensors.on_message_out(message.tp, message.offset, message)
    if monitor is not None and isinstance(dropped[0][1], BatchState):
        monitor.on_batch_dropped(len(dropped), tracked)
    notify(consumer._waiting_for_ack)  # noqa: SLF001
    log.info(
        "dropped %d events that a rebalance made stale while they waited for a commit; they are fetched again",
        len(dropped), extra={"event": "stale_generation_skipped", "count": len(dropped)},
    )
    return kept


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


def ack_batch(stream: faust.StreamT, batch: Sequence[tuple[EventT, Any]]) -> None:
    """Ack every event of a batch ``event_batches`` yielded, and report them as it did: per batch or per event."""
    if not batch:
        return
    monitor = batch_monitor(stream.app)
    state = batch[0][1]
    if monitor is None or not isinstance(state, BatchState):
        for event, sensor_state in batch:
            ack(stream, event, sensor_state)
        return
    messages_out = ack_messages(stream.app.consumer, [event.message for event, _ in batch])
    monitor.on_batch_out(len(batch), messages_out, state)


def ack_messages(consumer: Any, messages: Sequence[Message]) -> int:
    """``Event.ack`` of each message, under one hold of Faust's ``ack_lock``; how many were final acks it counted.

    Per event, Faust takes the lock three times (``Message.ack``, ``decref``, ``Consumer.ack``) and wakes the
    consumer's ack waiter; here that is once per batch, with the same bookkeeping: a message's final ack (its
    last stream) marks its offset done unless it is below the committed offset or already done.
    """
    acked = 0
    committed_offsets = consumer._committed_offset  # noqa: SLF001 - the state Consumer.ack keeps
    acked_indexes, acked_lists = consumer._acked_index, consumer._acked  # noqa: SLF001
    unacked = consumer._unacked_messages  # noqa: SLF001
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    with ack_lock:
        for message in messages:
            if message.acked:
                continue
            refcount = message.refcount = max(message.refcount - 1, 0)
            if refcount:
                continue
            if type(message).on_final_ack is not ConsumerMessage.on_final_ack:  # pragma: no cover - not Faust's consumer's
                acked += bool(message.on_final_ack(consumer))
                continue
            message.acked = True
            if not acks_enabled_for(message.topic):
                continue
            tp, offset = message.tp, message.offset
            committed = committed_offsets[tp]
            if committed is None or offset >= committed:
                acked_index = acked_indexes[tp]
                if offset not in acked_index:
                    unacked.discard(message)
                    acked_index.add(offset)
                    acked_lists[tp].append(offset)
                    consumer._n_acked += 1  # noqa: SLF001
                    acked += 1
        notify(consumer._waiting_for_ack)  # noqa: SLF001
    return acked


class BatchState(dict):  # type: ignore[type-arg]
    """A batch's sensor state (one for all its events): told apart from Faust's per-event dicts."""


def batch_monitor(app: faust.App) -> Any:
    """The app's monitor when it is its only sensor and reports whole batches (worker/kafka/monitor.py), else None."""
    sensors = app.sensors._sensors  # noqa: SLF001 - Faust's SensorDelegate keeps no public count
    if len(sensors) != 1:
        return None
    (sensor,) = sensors
    return sensor if hasattr(sensor, "on_batch_in") else None
