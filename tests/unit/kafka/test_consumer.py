"""The consumer's drain-loop fast path keeps Faust's semantics (a rebalance still abandons a stuck callback); a fetch
overlapping a seek is dropped; under exactly_once its highwaters come from the broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from worker.stream.app import create_app
from worker.core import load_bundled_policy
from worker.kafka.consumer import Consumer
from worker.kafka import stable_offsets
from worker.kafka.stable_offsets import UNSTABLE_OFFSET_COMMIT, OffsetFetchResponse_v7, StableOffsetFetchRequest
from worker.settings import Settings


def make_consumer(*, in_transaction: bool = False) -> Iterator[Consumer]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        guarantee = "exactly_once" if in_transaction else "at_least_once"
        settings = Settings.from_env({
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "PROCESSING_GUARANTEE": guarantee, "STATE_STORE": "memory",
        })
        app = create_app(settings, load_bundled_policy())
        consumer = app.consumer
        assert isinstance(consumer, Consumer), "the app must be built with the extended consumer"
        # Faust turns transactions on only inside a worker process (app.in_worker), as the worker's consumer has them.
        consumer.in_transaction = in_transaction
        yield consumer
        consumer._thread.thread_loop.close()  # the consumer thread's own loop, created with the consumer
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture
def consumer() -> Iterator[Consumer]:
    yield from make_consumer()


@pytest.fixture
def exactly_once_consumer() -> Iterator[Consumer]:
    yield from make_consumer(in_transaction=True)


def run(consumer: Consumer, coroutine: object) -> object:
    return consumer.loop.run_until_complete(coroutine)  # type: ignore[arg-type]


def test_callback_that_finishes_inline_creates_no_task(consumer: Consumer) -> None:
    calls = []

    async def callback() -> str:
        calls.append("ran")
        return "delivered"

    async def drain_one() -> tuple[object, int]:
        before = len(asyncio.all_tasks())
        result = await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        return result, len(asyncio.all_tasks()) - before

    result, new_tasks = run(consumer, drain_one())
    assert calls == ["ran"]
    assert new_tasks == 0
    assert result.results == ["delivered"] and result.stopped is False


def test_rebalance_abandons_a_callback_stuck_on_a_full_buffer(consumer: Consumer) -> None:
    buffer_has_room = asyncio.Event()
    progress = []

    async def callback() -> None:
        progress.append("started")
        await buffer_has_room.wait()  # a full stream buffer: the callback must yield
        progress.append("finished")

    async def drain_one_during_rebalance() -> object:
        waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert progress == ["started"] and not waiting.done()
        consumer.suspend_flow.set()  # what Faust does when a rebalance starts
        return await asyncio.wait_for(waiting, 5)

    result = run(consumer, drain_one_during_rebalance())
    assert progress == ["started"], "the abandoned callback must not run on"
    assert result.results == [True], "the winner is the suspend-flow wait, as in Faust"


def test_callback_that_yields_and_then_finishes_returns_its_result(consumer: Consumer) -> None:
    async def callback() -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        return "late"

    result = run(consumer, consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    assert result.results == ["late"]


def test_callback_errors_propagate_and_leave_no_dangling_coroutine(consumer: Consumer) -> None:
    async def inline_failure() -> None:
        raise ValueError("boom")

    async def later_failure() -> None:
        await asyncio.sleep(0)
        raise KeyError("bang")

    with pytest.raises(ValueError, match="boom"):
        run(consumer, consumer.wait_first(inline_failure(), consumer.suspend_flow.wait()))
    with pytest.raises(KeyError, match="bang"):
        run(consumer, consumer.wait_first(later_failure(), consumer.suspend_flow.wait()))


def test_suspended_flow_takes_fausts_own_path(consumer: Consumer) -> None:
    consumer.suspend_flow.set()
    progress = []

    async def callback() -> None:
        progress.append("ran")
        await asyncio.sleep(1)

    result = run(consumer, consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    assert result.results == [True]


CHANGELOG = TP("cw-input-decision-state-changelog", 0)


class JustAssigned:
    """An aiokafka consumer right after a rebalance: it has not fetched from the partition yet."""

    def __init__(self, end: int) -> None:
        self.end = end
        self.asked: list[list[TP]] = []

    def last_stable_offset(self, tp: TP) -> int | None:
        return None  # aiokafka learns it from fetch responses only

    async def end_offsets(self, partitions: list[TP]) -> Mapping[TP, int]:
        self.asked.append(list(partitions))  # a ListOffsets request; read_committed: the last stable offset
        return {tp: self.end for tp in partitions}


def on_this_thread(consumer: Consumer, aiokafka_consumer: JustAssigned) -> None:
    thread = consumer._thread

    async def call_thread(fun: Any, *args: Any, **kwargs: Any) -> Any:
        return await fun(*args, **kwargs)

    thread._ensure_consumer = lambda: aiokafka_consumer  # type: ignore[method-assign]
    thread.call_thread = call_thread  # type: ignore[method-assign]


def test_fausts_own_highwater_is_unknown_right_after_a_rebalance(exactly_once_consumer: Consumer) -> None:
    """Why the override exists: Faust's driver returns None here, which its recovery takes for an empty changelog."""
    thread = exactly_once_consumer._thread
    on_this_thread(exactly_once_consumer, JustAssigned(end=2210))
    highwaters = run(exactly_once_consumer, faust_aiokafka.AIOKafkaConsumerThread._highwaters(thread, [CHANGELOG]))
    assert highwaters == {CHANGELOG: None}


def test_exactly_once_highwaters_are_asked_of_the_broker(exactly_once_consumer: Consumer) -> None:
    """A worker taking over a changelog partition learns its real end and recovers the table up to it."""
    just_assigned = JustAssigned(end=2210)
    on_this_thread(exactly_once_consumer, just_assigned)
    assert run(exactly_once_consumer, exactly_once_consumer.highwaters(CHANGELOG)) == {CHANGELOG: 2210}
    assert just_assigned.asked == [[CHANGELOG]]


INPUT = TP("input", 0)


def acked_since_last_commit(consumer: Consumer, committed: int, acked: range) -> list[tuple[dict[TP, int], bool]]:
    """Input offsets acked since the last commit, and a record of what is committed (transactions stubbed)."""
    commits: list[tuple[dict[TP, int], bool]] = []

    async def commit(offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        commits.append((dict(offsets), start_new_transaction))
        return True

    consumer.transactions.commit = commit  # type: ignore[method-assign]
    consumer.assignment = lambda: {INPUT}  # type: ignore[method-assign]
    consumer._committed_offset[INPUT] = committed
    consumer._acked[INPUT] = list(acked)
    consumer._acked_index[INPUT] = set(acked)

    async def app_on_partitions_revoked(revoked: set[TP]) -> None:
        await consumer.commit_and_end_transactions()  # what Faust's app handler ends with (wait_empty)

    consumer._on_partitions_revoked = app_on_partitions_revoked  # type: ignore[method-assign]
    return commits


def test_fausts_own_revoke_forgets_offsets_acked_since_the_last_commit(exactly_once_consumer: Consumer) -> None:
    """Why the override exists: their output is in the open transaction, but their offsets are never committed."""
    commits = acked_since_last_commit(exactly_once_consumer, committed=100, acked=range(100, 140))
    run(exactly_once_consumer, faust_aiokafka.Consumer.on_partitions_revoked(exactly_once_consumer, {INPUT}))
    assert commits == []


def test_exactly_once_revoke_commits_acked_offsets_with_their_output(exactly_once_consumer: Consumer) -> None:
    """A partition assigned again keeps its open transaction: without this commit it would carry a second copy."""
    commits = acked_since_last_commit(exactly_once_consumer, committed=100, acked=range(100, 140))
    run(exactly_once_consumer, exactly_once_consumer.on_partitions_revoked({INPUT}))
    assert commits == [({INPUT: 140}, True)]
    assert not exactly_once_consumer._acked.get(INPUT)


def record(offset: int, tp: TP = INPUT) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, b"{}", None, 0, 2, [])


class Coordinator:
    """aiokafka's group coordinator as ``stable_offsets`` uses it: answers OffsetFetch v7 from ``committed``."""

    group_id = "cw-input"

    def __init__(self, committed: Mapping[TP, int | None], release: asyncio.Event) -> None:
        self.committed = committed
        self.release = release
        self.unstable_answers = 0  # answer UNSTABLE_OFFSET_COMMIT this many times first

    async def ensure_coordinator_known(self) -> None:
        return None

    async def _send_req(self, request: StableOffsetFetchRequest) -> OffsetFetchResponse_v7:
        await self.release.wait()
        asked = request.prepare({9: (0, 9)})
        assert asked.require_stable is True
        if self.unstable_answers:
            self.unstable_answers -= 1
            return OffsetFetchResponse_v7(0, [], UNSTABLE_OFFSET_COMMIT, {})
        topics = [
            (topic, [(p, -1 if (o := self.committed.get(TP(topic, p))) is None else o, -1, "", 0, {}) for p in indexes], {})
            for topic, indexes, _tags in asked.topics
        ]
        return OffsetFetchResponse_v7(0, topics, 0, {})


class Committed:
    """An aiokafka consumer whose committed offsets can be held half-way, as a real one is between its round trips."""

    def __init__(self, committed: Mapping[TP, int | None]) -> None:
        self.committed = dict(committed)
        self.sought: list[tuple[TP, int | str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self._coordinator = Coordinator(self.committed, self.release)

    def assignment(self) -> set[TP]:
        return set(self.committed)

    def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))

    def highwater(self, tp: TP) -> int:
        return 1_000

    def last_stable_offset(self, tp: TP) -> int:
        return 1_000

    async def position(self, tp: TP) -> int:
        return next(offset for sought, offset in reversed(self.sought) if sought == tp)  # type: ignore[return-value]

    async def seek_to_beginning(self, *partitions: TP) -> None:
        self.sought.extend((tp, "beginning") for tp in partitions)


def streaming(consumer: Consumer, committed: int) -> Committed:
    """A consumer whose flow runs on INPUT, committed at ``committed``, with its aiokafka consumer stubbed."""
    aiokafka_consumer = Committed({INPUT: committed})
    on_this_thread(consumer, aiokafka_consumer)  # type: ignore[arg-type]
    consumer._set_active_tps({INPUT})
    consumer.resume_flow()
    consumer._sought_generation = consumer.app.consumer_generation_id  # the table recovery's seek is done
    return aiokafka_consumer


def fetched(consumer: Consumer, offsets: range | Mapping[TP, range], meanwhile: Any = None) -> None:
    """The next fetch answers ``offsets`` (of INPUT, or per partition); ``meanwhile`` runs while it is in flight."""
    by_partition = offsets if isinstance(offsets, Mapping) else {INPUT: offsets}

    async def wait_next_records(timeout: float) -> tuple[Mapping[TP, list[ConsumerRecord]], set[TP]]:
        if meanwhile is not None:
            await meanwhile()
        records = {tp: [record(o, tp) for o in tp_offsets] for tp, tp_offsets in by_partition.items()}
        consumer._note_fetched(records)  # as Consumer._wait_next_records does with what Faust's fetched
        return records, set(by_partition)

    consumer._wait_next_records = wait_next_records  # type: ignore[method-assign]


def handed_over(consumer: Consumer, getmany: Any) -> list[tuple[TP, int]]:
    async def drain() -> list[tuple[TP, int]]:
        return [(tp, message.offset) async for tp, message in getmany(1.0)]

    return run(consumer, drain())  # type: ignore[return-value]


def delivered(consumer: Consumer, getmany: Any) -> list[int]:
    return [offset for _tp, offset in handed_over(consumer, getmany)]


def test_a_fetch_with_no_seek_meanwhile_is_delivered_in_order(consumer: Consumer) -> None:
    aiokafka_consumer = streaming(consumer, committed=100)
    fetched(consumer, range(100, 105))
    assert delivered(consumer, consumer.getmany) == [100, 101, 102, 103, 104]
    assert aiokafka_consumer.sought == []


def test_fausts_own_getmany_delivers_a_fetch_answered_across_a_seek(consumer: Consumer) -> None:
    """Why the override exists: the old positions' records arrive after the read offset went back to 100."""
    streaming(consumer, committed=100)
    fetched(consumer, range(150, 155), meanwhile=consumer.perform_seek)
    assert delivered(consumer, lambda timeout: faust_aiokafka.Consumer.getmany(consumer, timeout)) == list(range(150, 155))
    assert consumer._read_offset[INPUT] == 100  # the drain loop would count 101..149 as a gap, acked


def test_a_fetch_answered_across_a_seek_is_dropped_and_the_partitions_sought_again(consumer: Consumer) -> None:
    aiokafka_consumer = streaming(consumer, committed=100)
    fetched(consumer, range(150, 155), meanwhile=consumer.perform_seek)
    assert delivered(consumer, consumer.getmany) == []
    # once by the seek during the fetch, once more because aiokafka's position may be past the dropped records
    assert aiokafka_consumer.sought == [(INPUT, 100), (INPUT, 100)]
    assert consumer._read_offset[INPUT] == 100


def test_a_fetch_issued_while_a_seek_is_under_way_is_dropped(consumer: Consumer) -> None:
    aiokafka_consumer = streaming(consumer, committed=100)
    aiokafka_consumer.release.clear()

    async def seek_then_fetch() -> list[int]:
        seeking = asyncio.ensure_future(consumer.perform_seek())
        await asyncio.sleep(0)  # the seek is waiting on its committed offsets: the fetch below overlaps it
        assert not seeking.done()
        fetched(consumer, range(150, 155), meanwhile=lambda: asyncio.sleep(0, aiokafka_consumer.release.set()))
        offsets = [message.offset async for _tp, message in consumer.getmany(1.0)]
        await seeking
        return offsets

    assert run(consumer, seek_then_fetch()) == []
    assert aiokafka_consumer.sought == [(INPUT, 100), (INPUT, 100)]


def test_stream_records_fetched_before_this_generation_s_seek_are_held_back(consumer: Consumer) -> None:
    """aiokafka positioned them at committed offsets asked without require_stable: maybe before the last commit."""
    aiokafka_consumer = streaming(consumer, committed=100)
    consumer._sought_generation = None  # a rebalance: the table recovery has not sought yet
    fetched(consumer, range(90, 95))
    assert delivered(consumer, consumer.getmany) == []
    assert aiokafka_consumer.sought == [], "the recovery's own seek comes"
    run(consumer, consumer.perform_seek())
    fetched(consumer, range(100, 103))
    assert delivered(consumer, consumer.getmany) == [100, 101, 102]


def seek_after(consumer: Consumer, seen: int) -> list[int]:
    """Drain a fetch and, once ``seen`` records are handed over, seek to the committed offsets (the flow running)."""

    async def drain() -> list[int]:
        offsets = []
        async for _tp, message in consumer.getmany(1.0):
            offsets.append(message.offset)
            if len(offsets) == seen:
                await consumer.perform_seek()  # the table recovery's seek, which runs with the flow active
        return offsets

    return run(consumer, drain())  # type: ignore[return-value]


def test_a_seek_in_running_flow_goes_on_past_the_records_already_handed_over(consumer: Consumer) -> None:
    """They are being decided: sent again from the committed offset they were decided twice (committed duplicates)."""
    aiokafka_consumer = streaming(consumer, committed=100)
    fetched(consumer, range(100, 110))
    assert seek_after(consumer, seen=3) == [100, 101, 102]
    # the seek, on past 102; the rest of the fetch is dropped and the partitions sought again, again past 102
    assert aiokafka_consumer.sought == [(INPUT, 100), (INPUT, 103), (INPUT, 100), (INPUT, 103)]
    assert consumer._read_offset[INPUT] == 103


def test_a_seek_after_the_flow_stopped_goes_back_to_the_committed_offset(consumer: Consumer) -> None:
    """A rebalance stops the flow: the streams drop what they were handed, so it must be fetched again."""
    aiokafka_consumer = streaming(consumer, committed=100)
    fetched(consumer, range(100, 110))
    assert delivered(consumer, consumer.getmany) == list(range(100, 110))
    consumer.stop_flow()
    consumer.resume_flow()
    run(consumer, consumer.perform_seek())
    assert aiokafka_consumer.sought == [(INPUT, 100)]
    assert consumer._read_offset[INPUT] == 100


def test_a_seek_in_running_flow_leaves_partitions_committed_past_what_was_handed_over(consumer: Consumer) -> None:
    aiokafka_consumer = streaming(consumer, committed=100)
    fetched(consumer, range(100, 110))
    assert delivered(consumer, consumer.getmany) == list(range(100, 110))
    aiokafka_consumer.committed[INPUT] = 110  # all of it decided and committed
    run(consumer, consumer.perform_seek())
    assert aiokafka_consumer.sought == [(INPUT, 110)]
    assert consumer._read_offset[INPUT] == 110


def test_a_seek_waits_until_the_committed_offsets_are_stable(consumer: Consumer) -> None:
    """Right after a transaction commits, the coordinator may still wait for its marker: the offsets come after it."""
    aiokafka_consumer = streaming(consumer, committed=140)
    aiokafka_consumer._coordinator.unstable_answers = 2
    run(consumer, consumer.perform_seek())
    assert aiokafka_consumer._coordinator.unstable_answers == 0
    assert aiokafka_consumer.sought == [(INPUT, 140)]
    assert consumer._read_offset[INPUT] == 140


def test_changelog_records_of_a_fetch_across_a_seek_are_delivered(consumer: Consumer) -> None:
    """No seek to the committed offsets moves a changelog partition: a standby table must not miss its records."""
    changelog = TP(*consumer.app.tables.changelog_topics, 0)
    aiokafka_consumer = streaming(consumer, committed=100)
    consumer._set_active_tps({INPUT, changelog})
    fetched(consumer, {INPUT: range(150, 153), changelog: range(7, 10)}, meanwhile=consumer.perform_seek)
    assert handed_over(consumer, consumer.getmany) == [(changelog, 7), (changelog, 8), (changelog, 9)]
    assert aiokafka_consumer.sought == [(INPUT, 100), (INPUT, 100)]


def test_a_seek_to_committed_moves_never_committed_stream_partitions_to_the_beginning(consumer: Consumer) -> None:
    """aiokafka leaves them where they are; Faust has no read offset to see a jump there."""
    never, zero = TP("input", 1), TP("input", 2)
    changelog_never = TP(*consumer.app.tables.changelog_topics, 0)
    aiokafka_consumer = Committed({INPUT: 100, never: None, zero: 0, changelog_never: None})
    on_this_thread(consumer, aiokafka_consumer)  # type: ignore[arg-type]
    committed = run(consumer, consumer._thread.seek_to_committed())
    assert committed == {INPUT: 100, never: None, zero: 0, changelog_never: None}
    assert sorted(aiokafka_consumer.sought, key=str) == sorted([(INPUT, 100), (zero, 0), (never, "beginning")], key=str)


def test_the_consumer_thread_asks_brokers_to_hold_a_fetch_for_100_ms_not_faust_s_1500(consumer: Consumer) -> None:
    from aiokafka import AIOKafkaConsumer

    from worker.kafka.consumer import FETCH_MAX_WAIT_MS, ConsumerThread

    thread = consumer._thread
    assert isinstance(thread, ConsumerThread)

    async def waits() -> tuple[int, int]:  # aiokafka clients are made inside a running loop; neither is started
        faust_made = thread._create_worker_consumer(consumer.transport)
        plain = AIOKafkaConsumer(fetch_max_wait_ms=123)
        try:
            return faust_made._fetch_max_wait_ms, plain._fetch_max_wait_ms
        finally:
            await faust_made.stop()
            await plain.stop()

    ours, plain = run(consumer, waits())  # type: ignore[misc]
    assert ours == FETCH_MAX_WAIT_MS == 100
    # ... in the attribute AIOKafkaConsumer.start hands to its Fetcher (this fails if aiokafka renames it)
    assert plain == 123


def make_consumer_with(isolation_level: str, in_transaction: bool = False) -> Iterator[Consumer]:
    for consumer in make_consumer(in_transaction=in_transaction):
        consumer.transport.isolation_level = isolation_level
        yield consumer


@pytest.mark.parametrize(("isolation_level", "in_transaction", "expected"), [
    ("read_committed", False, "read_committed"),
    ("read_uncommitted", False, "read_uncommitted"),
    ("read_committed", True, "read_committed"),
], ids=["at-least-once-default", "at-least-once-uncommitted", "exactly-once"])
def test_the_input_is_read_at_the_configured_isolation_level(isolation_level: str, in_transaction: bool, expected: str) -> None:
    for consumer in make_consumer_with(isolation_level, in_transaction):
        async def made() -> str:
            aiokafka_consumer = consumer._thread._create_worker_consumer(consumer.transport)
            try:
                return aiokafka_consumer._isolation_level
            finally:
                await aiokafka_consumer.stop()

        assert run(consumer, made()) == expected


def test_fausts_own_driver_reads_uncommitted_records_under_at_least_once(consumer: Consumer) -> None:
    """Also asserted, so the override can go when Faust reads read_committed by itself."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    async def made() -> str:
        aiokafka_consumer = AIOKafkaConsumerThread._create_worker_consumer(consumer._thread, consumer.transport)
        try:
            return aiokafka_consumer._isolation_level
        finally:
            await aiokafka_consumer.stop()

    assert run(consumer, made()) == "read_uncommitted"


class Stable(Committed):
    """A partition with an upstream's transaction open: its last stable offset is behind its high watermark."""

    def highwater(self, tp: TP) -> int:
        return 1_000

    def last_stable_offset(self, tp: TP) -> int:
        return 900


@pytest.mark.parametrize(("isolation_level", "end"), [("read_committed", 900), ("read_uncommitted", 1_000)])
def test_the_end_of_a_partition_read_committed_is_its_last_stable_offset(isolation_level: str, end: int) -> None:
    for consumer in make_consumer_with(isolation_level):
        on_this_thread(consumer, Stable({INPUT: 0}))  # type: ignore[arg-type]
        assert consumer.highwater(INPUT) == end


def acked(consumer: Consumer, offsets: range, read: int, consumed_to: int | None) -> None:
    """INPUT with ``offsets`` acked, ``read`` the last offset handed to the streams, aiokafka at ``consumed_to``."""
    consumer._acked[INPUT] = list(offsets)
    consumer._acked_index[INPUT] = set(offsets)
    consumer._read_offset[INPUT] = read
    consumer._consumed_to = {} if consumed_to is None else {INPUT: consumed_to}


def test_fausts_own_commit_stops_before_a_trailing_transaction_marker(consumer: Consumer) -> None:
    """Also asserted, so the override can go when Faust commits past control records itself."""
    from faust.transport.drivers.aiokafka import Consumer as FaustConsumer

    acked(consumer, range(100, 105), read=104, consumed_to=106)  # 105: the marker of the upstream's transaction
    assert FaustConsumer._new_offset(consumer, INPUT) == 105


@pytest.mark.parametrize(("read", "consumed_to", "expected"), [
    (104, 106, 106),  # everything read is acked: past the marker
    (105, 106, 105),  # offset 105 was read and is not acked yet: it stays to be committed
    (104, 105, 105),  # nothing skipped
    (104, None, 105),  # no positions (a seek, a dropped fetch, a stopped flow since)
], ids=["past-the-marker", "a-record-in-flight", "nothing-skipped", "positions-unknown"])
def test_the_commit_goes_past_control_records_only_when_everything_read_is_acked(
    consumer: Consumer, read: int, consumed_to: int | None, expected: int,
) -> None:
    acked(consumer, range(100, 105), read=read, consumed_to=consumed_to)
    assert consumer._new_offset(INPUT) == expected


def test_positions_are_forgotten_when_the_flow_stops_or_a_seek_starts(consumer: Consumer) -> None:
    consumer._consumed_to = {INPUT: 106}
    consumer.stop_flow()
    assert consumer._consumed_to == {}
    streaming(consumer, committed=100)
    consumer._consumed_to = {INPUT: 106}
    run(consumer, consumer.perform_seek())
    assert consumer._consumed_to == {}


def test_a_commit_tells_which_partitions_it_committed(consumer: Consumer, monkeypatch: pytest.MonkeyPatch) -> None:
    mine, gone = TP("in", 0), TP("in", 1)
    committed: list[set[TP]] = []
    sent: list[Mapping[TP, int]] = []

    async def commit(offsets: Mapping[TP, int]) -> bool:
        sent.append(dict(offsets))
        return True

    async def flush() -> None:
        return None

    monkeypatch.setattr(consumer, "assignment", lambda: {mine})
    monkeypatch.setattr(consumer, "_commit", commit)
    monkeypatch.setattr(consumer.app.producer, "flush", flush)
    consumer.on_committed = committed.append
    assert run(consumer, consumer._commit_offsets({mine: 5, gone: 3})) is True
    assert sent == [{mine: 5}] and committed == [{mine}], "only what Faust committed: a revoked partition is not"


def stopping_after(consumer: Consumer, getmany: Any, count: int) -> list[tuple[TP, int]]:
    """What ``getmany`` hands over when the flow stops after ``count`` records (a rebalance begins meanwhile)."""

    async def drain() -> list[tuple[TP, int]]:
        got = []
        async for tp, message in getmany(1.0):
            got.append((tp, message.offset))
            if len(got) == count:
                consumer.stop_flow()
        return got

    return run(consumer, drain())  # type: ignore[return-value]


def test_fausts_own_getmany_drops_the_rest_of_a_fetch_when_the_flow_stops(consumer: Consumer) -> None:
    """Why changelog partitions are sought back: aiokafka's positions are already past what was dropped."""
    changelog = TP(*consumer.app.tables.changelog_topics, 0)
    streaming(consumer, committed=100)
    consumer._set_active_tps({changelog})
    fetched(consumer, {changelog: range(7, 13)})
    faust_getmany = lambda timeout: faust_aiokafka.Consumer.getmany(consumer, timeout)  # noqa: E731
    assert stopping_after(consumer, faust_getmany, 2) == [(changelog, 7), (changelog, 8)]


def test_a_changelog_fetch_not_all_handed_over_is_read_again_from_the_first_dropped_record(consumer: Consumer) -> None:
    changelog = TP(*consumer.app.tables.changelog_topics, 0)
    aiokafka_consumer = streaming(consumer, committed=100)
    aiokafka_consumer.committed[changelog] = None  # assigned (a standby), never committed
    consumer._set_active_tps({changelog})
    fetched(consumer, {changelog: range(7, 13)})
    assert stopping_after(consumer, consumer.getmany, 2) == [(changelog, 7), (changelog, 8)]
    assert aiokafka_consumer.sought == [(changelog, 9)]
    fetched(consumer, {changelog: range(9, 13)})
    consumer.resume_flow()
    assert stopping_after(consumer, consumer.getmany, 99) == [(changelog, o) for o in range(9, 13)]
    assert aiokafka_consumer.sought == [(changelog, 9)], "all handed over: no seek"


@pytest.mark.parametrize("in_transaction, falls_back", [(False, True), (True, False)])
def test_a_seek_falls_back_from_unstable_offsets_only_under_at_least_once(
    in_transaction: bool, falls_back: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the wait's bound a stale committed offset means repeats: at_least_once's deal, never exactly_once's."""
    asked: list[dict[str, Any]] = []

    async def committed_offsets(consumer: Any, partitions: Any, **options: Any) -> dict[TP, int | None]:
        asked.append(options)
        return {INPUT: 5}

    monkeypatch.setattr(stable_offsets, "committed_offsets", committed_offsets)
    for consumer in make_consumer(in_transaction=in_transaction):
        observer = consumer.transport.on_offsets_wait  # type: ignore[attr-defined]
        assert observer is not None, "create_app counts the waits"
        on_this_thread(consumer, Committed({INPUT: 5}))  # type: ignore[arg-type]
        run(consumer, consumer._thread.seek_to_committed())
        assert asked == [{"fall_back": falls_back, "observe": observer}]


class TransactionalProducer:
    """aiokafka's transactional producer as a commit meets it: its own transaction state machine and offset check."""

    def __init__(self) -> None:
        from aiokafka.producer.transaction_manager import TransactionManager

        self._txn_manager = TransactionManager("cw-input-input-0", 60_000)
        self._txn_manager.set_pid_and_epoch(1, 0)  # initialized: ready for a transaction
        self.sent_offsets: list[dict[TP, int]] = []

    _ensure_transactional = AIOKafkaProducer._ensure_transactional

    async def send_offsets_to_transaction(self, offsets: Mapping[TP, int], group_id: str) -> None:
        if not self._txn_manager.is_in_transaction():  # aiokafka's own method: it raises before any request
            await AIOKafkaProducer.send_offsets_to_transaction(self, offsets, group_id)  # type: ignore[arg-type]
        self.sent_offsets.append(dict(offsets))  # in a transaction: the request it would send

    async def commit_transaction(self) -> None:
        self._txn_manager.committing_transaction()
        self._txn_manager.complete_transaction()

    async def begin_transaction(self) -> None:
        self._txn_manager.begin_transaction()


def with_transactions(consumer: Consumer, ended: set[TP], open_: set[TP]) -> dict[TP, TransactionalProducer]:
    """The app's producer holding a transactional producer per partition: ``ended`` ones after a commit that ended it."""
    consumer.assignment = lambda: ended | open_  # type: ignore[method-assign]
    consumer.app.assignor._topic_groups[INPUT.topic] = 0  # what the assignor learns from the app's agents
    producer = consumer.app.producer
    producers = {}

    async def make() -> None:
        for tp in sorted(ended | open_):
            transactional = producers[tp] = TransactionalProducer()
            transactional._txn_manager.begin_transaction()
            if tp in ended:
                await transactional.commit_transaction()  # commit_and_end_transactions: no new transaction begun
            transactional_id = f"{consumer.app.conf.id}-{consumer.app.assignor.group_for_topic(tp.topic)}-{tp.partition}"
            producer._transaction_producers[transactional_id] = transactional
            producer._trn_locks[transactional_id] = asyncio.Lock()

    run(consumer, make())
    return producers


def test_fausts_own_commit_into_an_ended_transaction_raises(exactly_once_consumer: Consumer) -> None:
    """The stop-time failure (also asserted, so the override can go when Faust changes): offsets for a partition whose
    transaction the first stop-time commit ended reach aiokafka, which raises."""
    from aiokafka.errors import IllegalOperation
    from faust.transport.drivers.aiokafka import Consumer as FaustConsumer

    with_transactions(exactly_once_consumer, ended={INPUT}, open_=set())
    with pytest.raises(IllegalOperation, match="Not in the middle of a transaction"):
        run(exactly_once_consumer, FaustConsumer._commit_offsets(exactly_once_consumer, {INPUT: 161}, False))


def test_offsets_of_an_ended_transaction_are_left_for_the_next_owner(exactly_once_consumer: Consumer) -> None:
    other = TP(INPUT.topic, 1)
    producers = with_transactions(exactly_once_consumer, ended={INPUT}, open_={other})
    exactly_once_consumer._committed_offset[INPUT] = 140
    committed = run(exactly_once_consumer, exactly_once_consumer._commit_offsets({INPUT: 161, other: 50}, False))
    assert committed is True
    assert producers[INPUT].sent_offsets == [] and producers[other].sent_offsets == [{other: 50}]
    assert exactly_once_consumer._committed_offset[INPUT] == 140, "not committed: read again by the next owner"
    assert exactly_once_consumer._committed_offset[other] == 50
    assert run(exactly_once_consumer, exactly_once_consumer._commit_offsets({INPUT: 161}, False)) is False


def test_aiokafka_reads_an_empty_set_of_partitions_as_every_partition() -> None:
    """Why the fetch asks for a copy of Faust's active partitions, and for nothing when there are none (also asserted,
    so the override can go when upstream changes): aiokafka filters what it returns by the set only when it is not
    empty, and Faust hands it the live set that pauses change."""
    import inspect

    from aiokafka.consumer.fetcher import Fetcher

    assert "if partitions and tp not in partitions:" in inspect.getsource(Fetcher.fetched_records)
    assert "fetcher.fetched_records(\n                    active_partitions," in inspect.getsource(
        faust_aiokafka.AIOKafkaConsumerThread._fetch_records
    )


def fetch_while_pausing(consumer: Consumer, monkeypatch: pytest.MonkeyPatch, active: set[TP]) -> tuple[Any, list[Any]]:
    """The consumer thread's fetch with Faust's live active set, emptied by a pause while aiokafka waits for records."""
    asked: list[Any] = []

    async def fausts_fetch(self: Any, aiokafka_consumer: Any, partitions: Any, timeout: Any = None, max_records: Any = None) -> Any:
        asked.append(partitions)
        active.clear()  # the recovery pauses the changelog partitions it has read
        return {tp: ["record"] for tp in (partitions or {STANDBY})}  # aiokafka: no partitions means every partition

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records", fausts_fetch)
    monkeypatch.setattr(consumer._thread, "positions", lambda wanted: {})
    return run(consumer, consumer._thread._fetch_records(None, active)), asked


STANDBY = TP("cw-input-decision-state-changelog", 2)


def test_a_fetch_asks_for_the_partitions_active_when_it_starts(consumer: Consumer, monkeypatch: pytest.MonkeyPatch) -> None:
    records, asked = fetch_while_pausing(consumer, monkeypatch, {CHANGELOG})
    assert asked == [{CHANGELOG}]
    assert records == {CHANGELOG: ["record"]}, "not the standby records of a partition nobody resumed yet"


def test_a_fetch_with_no_active_partition_asks_for_nothing(consumer: Consumer, monkeypatch: pytest.MonkeyPatch) -> None:
    records, asked = fetch_while_pausing(consumer, monkeypatch, set())
    assert records == {} and asked == []


def awaiting_reset(consumer: Consumer) -> tuple[Any, Any]:
    """The consumer thread's aiokafka consumer with INPUT assigned, fetched from (a highwater), and no position yet:
    what a seek to the beginning of a never-committed partition leaves until the next fetch resets it."""
    from aiokafka.consumer.subscription_state import SubscriptionState
    from aiokafka.structs import TopicPartition

    async def assigned() -> SubscriptionState:  # aiokafka makes its futures on the running loop
        subscriptions = SubscriptionState()
        subscriptions.assign_from_user({TopicPartition(INPUT.topic, INPUT.partition)})
        return subscriptions

    subscriptions: Any = run(consumer, assigned())
    state = subscriptions.subscription.assignment.state_value(TopicPartition(INPUT.topic, INPUT.partition))
    state.highwater = 100
    state.timestamp = time.time() * 1000  # polled a moment ago: Faust's fetch check passes
    aiokafka_consumer = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=subscriptions))
    thread = consumer._thread
    thread._consumer = aiokafka_consumer  # type: ignore[assignment]
    thread._ensure_consumer = lambda: aiokafka_consumer  # type: ignore[method-assign]
    thread.time_started = time.monotonic()
    return thread, state


def test_fausts_livelock_check_crashes_on_a_partition_awaiting_reset(consumer: Consumer) -> None:
    """Why the worker's check skips such partitions: aiokafka asserts a position exists (canary)."""
    thread, _ = awaiting_reset(consumer)
    with pytest.raises(AssertionError):
        faust_aiokafka.AIOKafkaConsumerThread.verify_event_path(thread, time.monotonic(), INPUT)


def test_the_livelock_check_skips_a_partition_awaiting_reset_and_checks_it_once_positioned(consumer: Consumer) -> None:
    thread, state = awaiting_reset(consumer)
    assert thread.verify_event_path(time.monotonic(), INPUT) is None
    state.reset_to(100)  # the next fetch's reset: a position, at the highwater (nothing to process)
    checked: list[TP] = []
    original = faust_aiokafka.AIOKafkaConsumerThread.verify_event_path

    def spy(self: Any, now: float, tp: TP) -> None:
        checked.append(tp)
        return original(self, now, tp)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "verify_event_path", spy)
        thread.verify_event_path(time.monotonic(), INPUT)
    assert checked == [INPUT], "a positioned partition gets Faust's check"
