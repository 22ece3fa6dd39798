"""The agent's batch reader: events fetched before a rebalance are dropped without committing their offsets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import faust
import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from worker.kafka.batches import ack_batch, ack_messages, batch_monitor, drop_stale
from worker.stream.agent import event_batches
from worker.stream.app import create_app
from worker.core import load_bundled_policy
from worker.settings import Settings

TOPIC = "catalog.product-upserts"
PARTITION = TP(TOPIC, 0)


@pytest.fixture
def app() -> Iterator[faust.App]:
    with worker_app() as app:
        yield app


@contextmanager
def worker_app(**env: str) -> Iterator[faust.App]:
    """The worker's app (memory state, ``env`` besides) on its own event loop, consumer generation 7, flow active."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STATE_STORE": "memory", **env})
        app = create_app(settings, load_bundled_policy())
        app.in_worker = True  # what `faust worker` sets (Faust's in_transaction needs it)
        app.consumer_generation_id = 7
        app.flow_control.resume()
        app.topics.acking_topics.add(TOPIC)  # what the conductor does once the running worker subscribes
        yield app
        app.consumer._thread.thread_loop.close()  # the consumer thread's own loop, created with the consumer
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def event(app: faust.App, offset: int, generation_id: int) -> faust.EventT:
    message = ConsumerMessage(
        TOPIC, 0, offset, 0.0, 0, {}, b"key", b"{}", None, tp=PARTITION, generation_id=generation_id
    )
    return app.create_event(b"key", b"{}", {}, message)


def read_one_batch(app: faust.App, events: list[faust.EventT]) -> list[int]:
    """Offsets of the batch the reader yields after ``events`` were queued (the stale ones never are)."""
    stream = app.stream(app.topic(TOPIC))

    async def read() -> list[int]:
        batches = event_batches(stream, 100)
        queue = aiter(stream.channel).queue
        for queued in events:
            queue.put_nowait(queued)
        batch = await asyncio.wait_for(anext(batches), 5)
        await batches.aclose()
        return [queued.message.offset for queued, _ in batch]

    return app.loop.run_until_complete(read())


def test_events_of_an_old_generation_are_dropped_without_marking_their_offsets_done(app: faust.App) -> None:
    consumer = app.consumer
    # Right after a rebalance the consumer knows no committed offset for the partition yet.
    assert consumer._committed_offset[PARTITION] is None
    stale = [event(app, offset, generation_id=6) for offset in range(100, 140)]
    current = event(app, 100, generation_id=7)  # the same record, fetched again after the seek

    assert read_one_batch(app, [*stale, current]) == [100]
    assert not consumer._acked[PARTITION], "a stale event must not count as processed"
    assert consumer._new_offset(PARTITION) is None, "nothing is committable before the record is processed"
    assert all(queued.message.acked for queued in stale), "and nothing may ack the stale copies later"


def test_events_arriving_while_flow_is_suspended_are_dropped_the_same_way(app: faust.App) -> None:
    app.flow_control.suspend()
    suspended = [event(app, offset, generation_id=7) for offset in range(5)]
    app.flow_control.resume()
    app.flow_control.suspend()

    async def read_nothing() -> None:
        stream = app.stream(app.topic(TOPIC))
        batches = event_batches(stream, 100)
        queue = aiter(stream.channel).queue
        for queued in suspended:
            queue.put_nowait(queued)
        reading = asyncio.ensure_future(anext(batches))
        for _ in range(100):  # until the reader has taken everything queued
            await asyncio.sleep(0)
            if queue.empty():
                break
        await asyncio.sleep(0)
        assert queue.empty() and not reading.done(), "the suspended events must not come out as a batch"
        reading.cancel()

    app.loop.run_until_complete(read_nothing())
    assert not app.consumer._acked[PARTITION]


def test_fausts_own_ack_of_a_stale_event_would_make_its_offset_committable(app: faust.App) -> None:
    """Why the reader does not ack stale events as Faust's Stream iterator does (faust-streaming 0.11)."""
    consumer = app.consumer
    for offset in range(100, 140):
        event(app, offset, generation_id=6).ack()
    assert consumer._new_offset(PARTITION) == 140, "records 100-139 would be committed unprocessed"


COUNTERS = ("messages_received_total", "messages_active", "events_total", "events_active")


def counters(monitor: object) -> dict[str, object]:
    found = {name: getattr(monitor, name) for name in COUNTERS}
    found["by_topic"] = dict(monitor.messages_received_by_topic)  # type: ignore[attr-defined]
    found["read_offsets"] = dict(monitor.tp_read_offsets)  # type: ignore[attr-defined]
    found["by_stream"] = sorted(monitor.events_by_stream.values())  # type: ignore[attr-defined]
    found["runtime_samples"] = len(monitor.events_runtime)  # type: ignore[attr-defined]
    return found


class Owner:
    """The agent task that owns a stream (the monitor counts events per owner)."""


OWNER = Owner()


def read_and_ack(app: faust.App, offsets: range) -> None:
    stream = app.stream(app.topic(TOPIC))
    stream.task_owner = OWNER  # type: ignore[assignment]

    async def read() -> None:
        batches = event_batches(stream, 100)
        queue = aiter(stream.channel).queue
        for offset in offsets:
            queue.put_nowait(event(app, offset, generation_id=7))
        batch = await asyncio.wait_for(anext(batches), 5)
        await batches.aclose()
        # The decide agent's latency metric reads when each message came in (worker/stream/agent.py).
        assert all(queued.message.time_in is not None for queued, _ in batch)
        ack_batch(stream, batch)

    app.loop.run_until_complete(read())


@pytest.mark.parametrize("per_event", [False, True], ids=["batch", "per-event"])
def test_a_batch_is_reported_to_the_monitor_as_fausts_per_event_calls_report_it(app: faust.App, per_event: bool) -> None:
    app.sensors.add(app.monitor)
    if per_event:  # a second sensor: the reader falls back to Faust's per-event calls
        app.sensors.add(faust.Sensor())
    assert (batch_monitor(app) is None) is per_event
    read_and_ack(app, range(10, 15))
    read_and_ack(app, range(15, 18))
    found = counters(app.monitor)
    assert {name: found[name] for name in COUNTERS} == {
        "messages_received_total": 8, "messages_active": 0, "events_total": 8, "events_active": 0,
    }
    assert found["by_topic"] == {TOPIC: 8} and found["read_offsets"] == {PARTITION: 17}
    assert found["by_stream"] == [3, 5], "per stream (each read makes one)"
    assert found["runtime_samples"] == (8 if per_event else 2), "per event, or one sample per batch"
    assert app.consumer._new_offset(PARTITION) == 18, "every event acked"


def test_fausts_sensor_delegate_calls_every_sensor_for_each_event(app: faust.App) -> None:
    """Why batches are reported apart: Faust's delegate builds a dict per event and calls each sensor (canary)."""
    calls: list[int] = []

    class Counting(faust.Sensor):
        def on_stream_event_in(self, tp, offset, stream, event):  # type: ignore[no-untyped-def]
            calls.append(offset)

    app.sensors.add(Counting())
    stream = app.stream(app.topic(TOPIC))
    for offset in range(3):
        app.sensors.on_stream_event_in(PARTITION, offset, stream, event(app, offset, generation_id=7))
    assert calls == [0, 1, 2]


def ack_scenario(app: faust.App) -> list[ConsumerMessage]:
    """Messages as a batch may hold them: fresh ones, a repeated offset, one below the committed offset, one
    already acked, one a second stream still holds, and one of a topic whose offsets are not committed."""
    consumer = app.consumer
    consumer._acked.clear()
    consumer._acked_index.clear()
    consumer._n_acked = 0
    consumer._committed_offset[PARTITION] = 100

    def message(offset: int, topic: str = TOPIC, refcount: int = 1) -> ConsumerMessage:
        made = ConsumerMessage(topic, 0, offset, 0.0, 0, {}, b"key", b"{}", None, tp=TP(topic, 0), generation_id=7)
        made.refcount = refcount
        made.tracked = True
        consumer._unacked_messages.add(made)
        return made

    done = message(99)
    done.acked = True
    return [
        *(message(offset) for offset in range(100, 106)), message(103), message(50), done,
        message(106, refcount=2), message(107), message(5, topic="not-acked"),
    ]


def ack_outcome(app: faust.App, messages: list[ConsumerMessage], acked: int) -> dict[str, object]:
    consumer = app.consumer
    return {
        "acked": acked,
        "offsets": dict(consumer._acked), "index": dict(consumer._acked_index), "n_acked": consumer._n_acked,
        "unacked": sorted(m.offset for m in consumer._unacked_messages if m in messages),
        "messages": [(m.offset, m.acked, m.refcount) for m in messages],
        "new_offset": consumer._new_offset(PARTITION),
    }


def test_canary_a_batch_ack_keeps_the_books_fausts_per_event_acks_keep(app: faust.App) -> None:
    # When this fails, Faust's Message.ack or Consumer.ack changed: worker/kafka/batches.py:ack_messages must follow.
    messages = ack_scenario(app)
    fausts = ack_outcome(app, messages, sum(message.ack(app.consumer) for message in messages))
    messages = ack_scenario(app)
    ours = ack_outcome(app, messages, ack_messages(app.consumer, messages))
    assert ours == fausts
    assert fausts["acked"] == 7 and fausts["new_offset"] == 106, "100-105 and 107 done; 106 still held"


def test_a_batch_ack_wakes_the_consumer_waiting_for_acks(app: faust.App) -> None:
    consumer = app.consumer
    waiter = consumer._waiting_for_ack = app.loop.create_future()
    ack_messages(consumer, ack_scenario(app))
    assert waiter.done()


@pytest.mark.parametrize("per_event", [False, True], ids=["batch", "per-event"])
def test_a_batch_gone_stale_while_waiting_is_dropped_with_the_books_and_sensors_balanced(
    app: faust.App, per_event: bool,
) -> None:
    app.sensors.add(app.monitor)
    if per_event:
        app.sensors.add(faust.Sensor())
    consumer = app.consumer
    stream = app.stream(app.topic(TOPIC))
    stream.task_owner = OWNER  # type: ignore[assignment]

    async def read() -> list[tuple[faust.EventT, object]]:
        batches = event_batches(stream, 100)
        queue = aiter(stream.channel).queue
        for offset in range(10, 15):
            queue.put_nowait(event(app, offset, generation_id=7))
        batch = await asyncio.wait_for(anext(batches), 5)
        await batches.aclose()
        return batch

    batch = app.loop.run_until_complete(read())
    assert drop_stale(stream, batch) is batch, "nothing changed meanwhile: the same batch"
    waiter = consumer._waiting_for_ack = app.loop.create_future()
    app.consumer_generation_id = 8  # a rebalance while the batch waited
    assert drop_stale(stream, batch) == []
    assert waiter.done(), "the consumer's wait for unacked events is woken"
    assert not consumer._acked[PARTITION] and not consumer._unacked_messages
    assert all(queued.message.acked for queued, _ in batch), "nothing may ack them later"
    found = counters(app.monitor)
    assert (found["messages_active"], found["events_active"]) == (0, 0)


def test_only_the_stale_events_of_a_batch_are_dropped(app: faust.App) -> None:
    stream = app.stream(app.topic(TOPIC))
    batch = [(event(app, 10, generation_id=6), {}), (event(app, 10, generation_id=7), {})]
    assert [queued.message.generation_id for queued, _ in drop_stale(stream, batch)] == [7]
