"""Faust's aiokafka consumer, extended: the hot path without per-message tasks, stable seeks, exactly-once commits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterable, Mapping
from typing import Any

from aiokafka.structs import TopicPartition
from faust.transport.consumer import TopicPartitionGroup
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from mode.services import WaitResults

from worker.kafka import stable_offsets, unreadable
from worker.kafka.conductor import Conductor
from worker.kafka.recovery import ChangelogRead, TableManager
from worker.kafka.transactions import TransactionAborted, TransactionGate

READ_COMMITTED = "read_committed"

# Faust's consumer uses asyncio.Event for suspend_flow: its wait() coroutine marks the drain loop's call.
_EVENT_WAIT_CODE = asyncio.Event.wait.__code__


class _Resume:
    """Await the rest of a coroutine whose first step already ran and yielded ``pending``.

    Equivalent to ``yield from coro`` picked up after its first step: values and
    exceptions (cancellation included) travel to and from the coroutine unchanged.
    """

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - forwarded into the coroutine, as yield from does
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


FETCH_MAX_WAIT_MS = 100


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread: fetches held FETCH_MAX_WAIT_MS; seeks to stable committed offsets, on every stream partition.

    Faust fixes the broker-side fetch wait at 1.5 s. aiokafka keeps one fetch
    request in flight per broker and leaves out of it the partitions whose last
    fetch is not consumed yet. The request then asks only for partitions with
    nothing new (an idle changelog or Faust's leader topic, say), and the broker
    holds it for the whole fetch wait: meanwhile the busy partition cannot be
    fetched. With 1.5 s a worker on one input partition stopped at ~12,400
    events/s (6,090 with 4 MiB fetches); with 100 ms it does ~15,000. What it
    costs: an idle worker asks each broker up to ten times a second instead of
    once in 1.5 s.

    The committed offsets are asked with require_stable (``worker/kafka/stable_offsets.py``).
    aiokafka's own request answers, for a moment after a transaction commits,
    with the offsets before it: a worker that committed in its revoke handler and
    sought soon after decided those events again (28 committed duplicates in one
    CI run). An open transaction holds that answer back for up to its timeout:
    the wait is bounded, logged and told to the transport's ``on_offsets_wait``;
    at the bound the seek fails (exactly_once), or goes on from the plain
    committed offsets (at_least_once).

    aiokafka's ``seek_to_committed`` leaves a partition with no committed offset
    (or offset 0) where its fetches left it. Right after a rebalance that can be
    past records that were fetched but never delivered (a batch dropped by
    ``Consumer.getmany``, or by Faust when the flow stopped), and with nothing
    committed Faust has no read offset to notice the jump: those events would be
    skipped. Such a partition is reset the way ``auto_offset_reset`` says
    (earliest, here); changelog partitions are left to the table recovery.

    Faust's driver reads ``read_committed`` only under exactly_once, so under
    at_least_once the records of an upstream's aborted transaction were decided
    and published. The isolation level is the transport's (KAFKA_ISOLATION_LEVEL,
    read_committed by default), and under read_committed a partition's end is its
    last stable offset (``highwater``), so an upstream's open transaction is not
    counted as lag the worker could work off.
    """

    fetches_started = 0
    last_fetch: ChangelogRead | None = None

    async def _fetch_records(
        self, consumer: Any, active_partitions: set[TP], timeout: float | None = None, max_records: int | None = None,
    ) -> Any:
        """Faust's fetch, of the partitions active when it starts; with its records, the changelog positions they leave.

        Faust hands aiokafka its live set of active partitions, and aiokafka reads
        an empty set as every partition. A pause during the fetch could empty it:
        the table recovery pauses the active changelog partitions when it has read
        them, before it resumes the standby ones. aiokafka then returned the standby
        records it had fetched, moving their positions on, and Faust's getmany
        dropped them (not active): a standby copy without its first 1,606-1,769
        offsets (4 of 4 instrumented runs), and a worker that took the
        partition over decided those products with no state. So the fetch asks
        for a copy of the set, and for nothing when it is empty.

        The positions (``worker/kafka/recovery.py``) are taken on this thread as the
        fetch returns, before anything else can move one: every changelog record
        below them was returned by this fetch or an earlier one.
        """
        self.fetches_started += 1
        fetch = self.fetches_started
        if active_partitions is not None:
            active_partitions = set(active_partitions)
            if not active_partitions:
                return {}
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)
        self.last_fetch = ChangelogRead(fetch, self.positions(self.consumer._is_changelog_tp))  # noqa: SLF001
        return records

    def verify_event_path(self, now: float, tp: TP) -> None:
        """Faust's livelock check, skipped for a partition aiokafka has no position for (awaiting a reset).

        Faust reads ``position`` of every assigned partition that has a highwater,
        and aiokafka asserts a position exists: a partition sought to its beginning
        (never committed) has none until the next fetch resets it, and that
        AssertionError crashed the consumer and the worker (test_rebalance, three
        workers, after a merge that made recoveries end sooner). The check only logs.
        """
        consumer = self._consumer
        subscription = None if consumer is None else consumer._fetcher._subscriptions.subscription  # noqa: SLF001
        assignment = None if subscription is None else subscription.assignment
        if assignment is None:
            return None
        state = assignment.state_value(TopicPartition(tp.topic, tp.partition))
        if state is None or not state.has_valid_position:
            return None
        return super().verify_event_path(now, tp)

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # noqa: SLF001 - read by AIOKafkaConsumer.start for its Fetcher
        if not self.consumer.in_transaction:  # exactly_once is read_committed already
            consumer._isolation_level = transport.isolation_level  # noqa: SLF001 - likewise
        batches = transport.unreadable

        def stop_partition(tp: TP, offset: int, error: BaseException) -> None:
            consumer.pause(tp)  # no more fetches of a batch that cannot be read; Faust's next resume tries again
            batches.met(tp, offset, error)

        for topic in transport.watched_topics:
            unreadable.watch(topic, stop_partition)
        return consumer

    def consumed_positions(self, is_changelog: Callable[[TP], bool]) -> dict[TP, int]:
        """aiokafka's position of each assigned stream partition: one past what its fetches returned or skipped.

        Read on the event loop between two ``getmany`` calls, when the consumer
        thread is not consuming (its background fetches do not move positions).
        """
        return self.positions(lambda tp: not is_changelog(tp))

    def positions(self, wanted: Callable[[TP], bool]) -> dict[TP, int]:
        """aiokafka's position of each assigned partition ``wanted`` picks, where it has one (read without a request)."""
        consumer = self._consumer
        subscription = consumer._subscription.subscription if consumer is not None else None  # noqa: SLF001
        assignment = subscription.assignment if subscription is not None else None
        if assignment is None:
            return {}
        positions = {}
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            if state is not None and state.has_valid_position and wanted(tp):
                positions[tp] = state.position
        return positions

    def highwater(self, tp: TP) -> int:
        if self.consumer.transport.isolation_level == READ_COMMITTED:
            # None until fetched since the assignment: lag unknown, not 0 (exactly_once is read_committed).
            return self._ensure_consumer().last_stable_offset(tp)
        return super().highwater(tp)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed)

    async def _seek_to_committed(self) -> Mapping[TP, int | None]:
        consumer = self._ensure_consumer()
        faust_consumer = self.consumer
        committed = await stable_offsets.committed_offsets(
            consumer, consumer.assignment(),
            # A stale committed offset means events decided again: at_least_once's deal, never exactly_once's.
            fall_back=not faust_consumer.in_transaction,
            observe=faust_consumer.transport.on_offsets_wait,  # type: ignore[attr-defined]
        )
        for tp, offset in committed.items():
            if offset is not None:
                consumer.seek(tp, offset)
        never_committed = [
            tp for tp, offset in committed.items() if offset is None and not self.consumer._is_changelog_tp(tp)  # noqa: SLF001
        ]
        if never_committed:
            if self.app.conf.consumer_auto_offset_reset == "latest":
                await consumer.seek_to_end(*never_committed)
            else:
                await consumer.seek_to_beginning(*never_committed)
        return committed


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, minus four asyncio tasks per message when flow is not suspended.

    Faust's drain loop hands every message over with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())``, which
    wraps both coroutines, plus the service's stopped and crashed events, in tasks
    and races them, so that a rebalance (``suspend_flow`` set) can abandon a
    callback stuck on a full or suspended stream buffer. That costs four tasks and
    an ``asyncio.wait`` per message.

    Here the callback's first step runs inline. If it finishes without ever
    yielding to the event loop, nothing else can have run meanwhile, so no
    rebalance can have started, and the race is skipped. If it yields (a full
    buffer, suspended flow control), the rest of it races ``suspend_flow`` exactly
    as in Faust. Every other ``wait_first`` call is Faust's own.

    Stream records reach the streams only from positions this generation's seek
    to the committed offsets has set, and a later seek does not send them again
    (``getmany``, ``perform_seek``). Under exactly_once commits pass through a
    ``TransactionGate`` (``gate``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = TransactionGate()
        self._seeks_started = 0
        self._seeks_done = 0
        self._sought_generation: int | None = None  # the consumer generation of the last seek to committed
        # Per partition, the last offset handed to the streams since the flow last stopped (changelog ones unused).
        self._handed_over: dict[TP, int] = {}
        # Per stream partition, aiokafka's position when everything it had returned was handed over (``getmany``).
        self._consumed_to: dict[TP, int] = {}
        # Told which partitions' offsets (and, under exactly_once, transactions) a commit made durable.
        self.on_committed: Callable[[set[TP]], None] | None = None
        # Per changelog partition, the first and last offset the last fetch returned (``getmany``).
        self._fetched_changelog: dict[TP, tuple[int, int]] = {}
        # Per partition, the highest offset handed to the drain loop (the table recovery reads the changelog ones).
        self.last_handed_over: dict[TP, int] = {}
        # The changelog positions of the last fetch whose records the drain loop has all taken (worker/kafka/recovery.py).
        self.changelog_read: ChangelogRead | None = None

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def fetches_started(self) -> int:
        """How many fetches the consumer thread has begun (``ChangelogRead.fetch`` of a later one is higher)."""
        return self._thread.fetches_started

    def resume_flow(self) -> None:
        """Faust's resume, except once the app stops: nothing is to be processed after the stop's commits.

        The app's stop stops the flow and the fetcher, waits for the events in
        progress and commits, ending each partition's transaction
        (``commit_and_end_transactions``); the consumer's own stop commits once
        more later. The table recovery runs until the tables stop, after that
        first commit, and if it ends meanwhile Faust resumes the flow and starts
        the fetcher again (``on_recovery_completed``): events would be decided
        into ended transactions, and acked after the last commit. Found in the
        code while looking for the stop-time IllegalOperation (docs/reliability.md).
        """
        if self.app.should_stop:
            return
        super().resume_flow()

    def stop_flow(self) -> None:
        super().stop_flow()
        self._handed_over = {}  # the streams drop what they hold (agents.forget): it is fetched again
        self._consumed_to = {}

    def _new_offset(self, tp: TP) -> int | None:
        """Faust's next offset to commit, or past the control records after it once everything read is acked.

        Faust commits one past the last acked record, and fills the offsets it
        skipped between two records (``_add_gap``). A transactional upstream ends
        each transaction with a marker, a control record that is never delivered:
        after the last record before it the commit stayed one short, and the lag
        showed 1 on every such partition until the next record came. aiokafka's
        position is past the marker, so when the streams have acked every record
        read from the partition, the commit goes to that position: everything
        below it was either acked or never a record (markers, aborted records).
        """
        offset = super()._new_offset(tp)
        consumed_to = self._consumed_to.get(tp)
        if consumed_to is None:
            return offset
        reached = offset if offset is not None else self._committed_offset.get(tp)
        read = self._read_offset.get(tp)
        if reached is not None and read is not None and read + 1 == reached < consumed_to:
            return consumed_to
        return offset

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets; while the flow runs, not back over records the streams already got.

        The table recovery seeks after it has resumed the stream partitions, and a
        fetch can hand records to the streams just before that (the drain loop
        yields to the event loop only every 100 records). They are being decided;
        sent again from the committed offset they were decided twice, and under
        exactly_once both copies joined the partition's transaction: committed
        duplicates (28 in one CI run). A rebalance stops the flow first, and then
        the streams drop what they got, so the seek goes to the committed offset.
        """
        self._seeks_started += 1
        self._consumed_to = {}
        generation = self.app.consumer_generation_id
        try:
            await super().perform_seek()
            if self._handed_over and self.flow_active:
                read_offset = self._read_offset
                onwards = {
                    tp: last + 1 for tp, last in self._handed_over.items()
                    if tp in read_offset and (read_offset[tp] is None or last >= read_offset[tp])
                    and not self._is_changelog_tp(tp)
                }
                if onwards:
                    await self.seek_wait(onwards)  # on the consumer thread; sets the read offsets too
            if self.app.consumer_generation_id == generation:
                self._sought_generation = generation
        finally:
            self._seeks_done += 1

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's ``getmany``; stream records only from positions this generation's seek set, none fetched across it.

        On assignment aiokafka positions the partitions at their committed
        offsets, asked without require_stable: right after the revoke handler's
        commit (exactly_once) that is the offset before it. Faust pauses the stream
        partitions for the table recovery and then seeks them to the committed
        offsets; records fetched before that seek come from those positions, so
        they are held back until it is done, and the seek fetches them again.

        A fetch can also overlap a seek: issued before it, or while it goes from
        partition to partition. Its records come from the old positions. Delivered
        after the seek, they move the read offset far ahead; Faust's drain loop
        takes the jump for a gap of compacted or control records, counts the
        skipped offsets as acked (the commit passes over them), and drops the
        re-fetched records below the new read offset as already read: events never
        decided (docs/reliability.md). So the stream records of such a fetch are
        dropped, and while the flow runs the partitions are sought to their
        committed offsets again, because aiokafka's position may already be past
        them. If the flow is stopped, a rebalance is under way, and Faust seeks
        again before it resumes the flow.

        Changelog records always go on: no seek to the committed offsets moves
        their partitions, and a standby table that missed some would stay without them.
        Faust's own ``getmany`` stops handing records over when the flow stops or
        the generation changes under it, after aiokafka has moved its positions
        past the whole fetch; stream partitions are sought back before the flow
        resumes, changelog partitions never were: a standby then went on from the
        end of that fetch, without the records before it, and the worker taking
        its partition over recovered only from there (products decided with no
        state; seen in the exactly-once rebalance test). So a changelog partition
        whose fetched records were not all handed over is sought back to the first
        one that was not.

        Each call starts once the drain loop has handed over everything the last
        one returned, so aiokafka's positions then bound what was read
        (``_new_offset``); they are kept only while nothing was dropped or sought.
        Likewise, once the drain loop has taken every record of a fetch, with the
        flow running and no rebalance since, the changelog positions the fetch left
        bound what the table recovery was handed (``changelog_read``).
        """
        started = self._seeks_started
        no_seek_under_way = self._seeks_done == started
        sought = self._sought_generation == self.app.consumer_generation_id
        fresh = no_seek_under_way and sought
        self._consumed_to = self._thread.consumed_positions(self._is_changelog_tp) if fresh else {}
        handed_over = self._handed_over  # once the flow stops, this batch's hand-overs go to a dict nobody reads
        is_changelog = self._is_changelog_tp
        overlapped = unsought = 0
        self._fetched_changelog = {}
        changelog_next: dict[TP, int] = {}  # per changelog partition, one past the last record handed over
        last_handed_over = self.last_handed_over
        generation = self.app.consumer_generation_id
        batch = super().getmany(timeout)
        try:
            async for tp, message in batch:
                no_seek_since = self._seeks_started == started
                if fresh and no_seek_since:
                    handed_over[tp] = message.offset
                elif not is_changelog(tp):
                    if no_seek_under_way and no_seek_since:
                        unsought += 1
                    else:
                        overlapped += 1
                    continue
                if is_changelog(tp):
                    changelog_next[tp] = message.offset + 1
                if message.offset > last_handed_over.get(tp, -1):
                    last_handed_over[tp] = message.offset
                yield tp, message
        finally:
            await batch.aclose()  # type: ignore[attr-defined]
            self._read_changelog_again(changelog_next)
        if self.flow_active and self.app.consumer_generation_id == generation:
            self.changelog_read = self._thread.last_fetch  # Faust's getmany dropped nothing: every record was taken
        if unsought or overlapped:
            self._consumed_to = {}  # positions past records nobody read
        if unsought:
            self.log.info("Held back %d stream records fetched before this generation's seek to committed", unsought)
        if overlapped:
            self.log.info("Dropped %d stream records fetched across a seek to the committed offsets", overlapped)
            if self.flow_active:
                try:
                    await self.perform_seek()
                except Exception as exc:  # noqa: BLE001 - as Faust's own seek in getmany: the next rebalance seeks again
                    self.log.warning("Seeking to the committed offsets again failed: %r", exc)

    async def _commit_offsets(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        """Faust's commit; then ``on_committed`` hears which partitions it committed (Faust tells only its tables).

        Under exactly_once, offsets of a partition whose transaction an earlier
        commit ended (``commit_and_end_transactions``, on stop) are left
        uncommitted, with a warning: no transaction can carry them any more, and
        the partition's next owner reads them again. Faust's commit sends them to
        the ended transaction, and aiokafka raises IllegalOperation('Not in the
        middle of a transaction'): a worker exited non-zero on its second
        stop-time commit (docs/reliability.md).
        """
        if self.in_transaction:
            ended = self._transactions_ended(offsets)
            if ended:
                self.log.warning(
                    "Not committing %r: the transactions of these partitions were ended by an earlier commit "
                    "(their next owner reads them again)", {tp: offsets[tp] for tp in sorted(ended)},
                )
                offsets = {tp: offset for tp, offset in offsets.items() if tp not in ended}
                if not offsets:
                    return False
        assignment = self.assignment()
        committable = {tp for tp in offsets if tp in assignment}  # what Faust's commit keeps
        did_commit = await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)
        if did_commit and self.on_committed is not None:
            self.on_committed(committable)
        return did_commit

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        records, active_partitions = await super()._wait_next_records(timeout)
        self._note_fetched(records)
        return records, active_partitions

    def _note_fetched(self, records: Mapping[TP, Any] | None) -> None:
        is_changelog = self._is_changelog_tp
        self._fetched_changelog = {
            tp: (messages[0].offset, messages[-1].offset)
            for tp, messages in (records or {}).items() if messages and is_changelog(tp)
        }

    def _read_changelog_again(self, handed_over_to: Mapping[TP, int]) -> None:
        """Seek back the changelog partitions whose fetched records Faust did not all hand over (``getmany``)."""
        fetched, self._fetched_changelog = self._fetched_changelog, {}
        if not fetched:
            return
        assignment = self.assignment()
        for tp, (first, last) in fetched.items():
            next_offset = handed_over_to.get(tp, first)
            if next_offset <= last and tp in assignment:
                self._thread.seek(tp, next_offset)
                self.log.info(
                    "Reading %s[%d] again from %d: the fetch up to %d was not handed to the tables",
                    tp.topic, tp.partition, next_offset, last,
                )

    def _transactions_ended(self, offsets: Mapping[TP, int]) -> set[TP]:
        """The partitions whose transactional producer is not in a transaction (Faust names them as its commit does)."""
        app = self.app
        producers = app.producer._transaction_producers  # noqa: SLF001 - Faust's producer per transactional id
        if not producers:
            return set()
        id_format = self.transactions.transactional_id_format
        ended = set()
        for tp in offsets:
            group = TopicPartitionGroup(tp.topic, tp.partition, app.assignor.group_for_topic(tp.topic))
            producer = producers.get(id_format.format(tpg=group, group_id=app.conf.id))
            if producer is not None and not producer._txn_manager.is_in_transaction():  # noqa: SLF001 - aiokafka's state
                ended.add(tp)
        return ended

    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        if not self.in_transaction:
            return await super().force_commit(topics, start_new_transaction=start_new_transaction)
        async with self.gate.exclusive():
            return await super().force_commit(topics, start_new_transaction=start_new_transaction)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Under exactly_once, commit what is acked before Faust forgets it.

        Faust's consumer drops the acked offsets of every revoked partition
        (``_acked``, and the committed offsets it knows) before its rebalance
        handler commits, so events acked since the last commit are never
        committed, while their output stays in the partition's open transaction.
        A partition the worker keeps (the eager protocol revokes everything, and
        the producer of a partition assigned again is kept) is then read again
        from its committed offset and decided again into the same transaction,
        which commits both copies: committed duplicates. Committing here first,
        under the gate (no batch is in flight, new ones wait), carries those
        offsets with their output; nothing can be acked between this commit and
        Faust's reset, which follows without yielding to the event loop.
        """
        if self.in_transaction and not (self.should_stop or self.app.should_stop):
            try:
                await self.force_commit()
            except TransactionAborted:
                pass  # output failed earlier: nothing is committed any more, and Faust's own commit raises
        await super().on_partitions_revoked(revoked)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        """The partitions' end offsets asked of the broker; under exactly_once, their last stable offsets.

        Faust's aiokafka driver answers under exactly_once from the consumer's
        ``last_stable_offset``, which aiokafka knows only once it has fetched from
        the partition since the last assignment: right after a rebalance that is
        None, Faust takes it for an empty changelog (highwater -1) and skips the
        table recovery, so a worker taking over a partition decided its products
        with no state (``previous_decision`` null). ``end_offsets`` asks the broker;
        the consumer reads ``read_committed``, so the answer is the last stable offset.
        """
        if not self.in_transaction:
            return await super().highwaters(*partitions)
        thread = self._thread
        return await thread.call_thread(thread._ensure_consumer().end_offsets, list(partitions))  # noqa: SLF001

    async def commit_transactions(self, transactional_ids: Iterable[str]) -> None:
        """With the gate held: commit what is acked (output with its offsets), then these transactions as they are.

        For output that has no input offsets of its own (re-screening): after the
        ordinary commit, whatever is left in these transactions was sent under the
        gate by the caller, so it is committed without offsets. A transaction the
        ordinary commit already ended is empty, and committing it costs no request.
        """
        await super().force_commit()
        producer = self.app.producer
        for transactional_id in sorted(set(transactional_ids)):
            async with producer._trn_locks[transactional_id]:  # noqa: SLF001 - Faust's per-transaction lock
                transaction = producer._transaction_producers[transactional_id]  # noqa: SLF001
                await transaction.commit_transaction()
                await transaction.begin_transaction()

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if (
            len(coros) == 2
            and timeout is None
            and getattr(coros[1], "cr_code", None) is _EVENT_WAIT_CODE
            and isinstance(coros[0], Coroutine)
            and not (self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set())
        ):
            callback, suspended = coros
            try:
                pending = callback.send(None)
            except StopIteration as done:
                suspended.close()
                return WaitResults([callback], [done.value], False)
            except BaseException:
                suspended.close()
                raise
            return await super().wait_first(_Resume(callback, pending), suspended)
        return await super().wait_first(*coros, timeout=timeout)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with the consumer above, reading its input at ``isolation_level``.

    It also gives the app the table manager of ``worker/kafka/recovery.py``
    (its recovery ends once this consumer has read the changelogs past their
    transaction markers; its changelog queue is not emptied when the flow
    resumes): the app's tables must not exist yet.

    A batch of one of ``watched_topics`` that cannot be read stops only its
    partition (``worker/kafka/unreadable.py``), and ``unreadable`` tells which.
    """

    Consumer = Consumer
    Conductor = Conductor

    def __init__(
        self, *args: Any, isolation_level: str = READ_COMMITTED, watched_topics: tuple[str, ...] = (),
        on_offsets_wait: stable_offsets.WaitObserver | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        if "tables" in vars(app):  # Faust's cached table manager, built from app.conf.TableManager on first use
            raise RuntimeError("the transport must be set before the app's tables are used")
        app.conf.TableManager = TableManager
        self.isolation_level = isolation_level
        self.watched_topics = watched_topics
        self.unreadable = unreadable.UnreadableBatches()
        self.on_offsets_wait = on_offsets_wait  # told how each wait for stable committed offsets ended
