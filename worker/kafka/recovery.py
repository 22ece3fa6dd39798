"""Faust's table recovery, ended at the changelogs' ends past their markers; its changelog queue kept and read lean."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, NamedTuple

from faust.tables import TableManager as FaustTableManager
from faust.tables import recovery as faust_recovery
from faust.types import TP
from mode import Service
from mode.utils.queues import ThrowableQueue

log = logging.getLogger(__name__)

END_CHECK_INTERVAL = 0.05  # seconds between two looks at the consumer while a recovery reads its changelogs
# Queued changelog records handed to a restore in a row without a turn of the event loop: ~1 ms of its work, so the
# consumer's drain loop and the web server still get the loop that often.
READY_IN_A_ROW = 128


class ChangelogRead(NamedTuple):
    """aiokafka's changelog positions when one fetch returned, taken on the consumer thread with that fetch.

    ``fetch`` numbers the fetch (``ConsumerThread.fetches_started`` when it began). Once the drain loop has
    taken every record of that fetch, every changelog record below ``positions`` has been handed to it.
    """

    fetch: int
    positions: dict[TP, int]


class Recovery(faust_recovery.Recovery):
    """Faust's table recovery; an active changelog partition is read once the consumer's position is past its end.

    Faust ends the recovery when, for every active changelog partition, the last
    record it applied is at the partition's highwater (its end offset less one).
    Under exactly_once the end is the last stable offset, and the offset before it
    is a transaction marker: a control record, never delivered. The recovery waits
    for it until its loop has been idle for two of its 5 s polls
    (``_slurp_changelogs``), then asks the consumer's position
    (``detect_aborted_tx``): ~10 s per rebalance, also when there is nothing to
    read because the local store is up to date.

    aiokafka's position is past markers and aborted records. Every 50 ms while a
    recovery reads, a partition counts as read up to its highwater when the
    positions the consumer thread took with a fetch that began after the
    recovery's seek are past the highwater, the drain loop has taken every
    record of that fetch (``Consumer.changelog_read``), and the recovery has
    applied every changelog record handed over (``Consumer.last_handed_over``
    is not past the partition's applied offset). That is what Faust's own
    fallback sets after its idle polls, without waiting for them; the end itself
    is Faust's (``_maybe_signal_recovery_end``). Nothing ends once the app
    stops, a rebalance is pending or the flow is stopped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_after: tuple[int, int] | None = None  # (consumer generation, fetches begun) at the active seek

    async def on_rebalance(self, *args: Any, **kwargs: Any) -> None:
        self._read_after = None
        await super().on_rebalance(*args, **kwargs)

    async def _seek_offsets(self, consumer: Any, tps: set[TP], offsets: Any, title: str) -> None:
        await super()._seek_offsets(consumer, tps, offsets, title)
        if offsets is self.active_offsets:
            self._read_after = (self.app.consumer_generation_id, consumer.fetches_started())

    @Service.task
    async def _end_when_read(self) -> None:
        while not self.should_stop:
            await self.sleep(END_CHECK_INTERVAL)
            if self.in_recovery:
                self.end_if_read()

    def end_if_read(self) -> bool:
        """End the recovery if every active changelog partition has been read and applied up to its highwater."""
        app = self.app
        consumer: Any = app.consumer
        read_after = self._read_after
        if (
            app.should_stop or self.should_stop or read_after is None or self.signal_recovery_start.is_set()
            or not consumer.flow_active or read_after[0] != app.consumer_generation_id
        ):
            return False
        read: ChangelogRead | None = consumer.changelog_read
        if read is None or read.fetch <= read_after[1]:
            return False
        handed_over = consumer.last_handed_over
        offsets = self.active_offsets
        for tp, highwater in self.active_highwaters.items():
            offset = offsets[tp]
            if highwater is None or offset is None or offset >= highwater:
                continue
            if read.positions.get(tp, -1) > highwater and handed_over.get(tp, -1) <= offset:
                offsets[tp] = highwater  # only markers or aborted records after ``offset``
        if not self.in_recovery or self.need_recovery():
            return False
        log.info("Changelogs read to their ends (past transaction markers): recovery ends")
        self.flush_buffers()  # what Faust's _maybe_signal_recovery_end does once nothing remains
        self._set_recovery_ended()
        self.signal_recovery_end.set()
        return True


class Ready:
    """A changelog record already queued, awaitable like the ``get()`` it comes from; ``wait_for`` below takes it as is."""

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item

    def __await__(self) -> Generator[Any, None, Any]:
        return self.item
        yield  # pragma: no cover - makes this a generator: awaiting it returns at once


class ChangelogQueue(ThrowableQueue):
    """Faust's changelog queue (mode's ``ThrowableQueue``) whose ``get()`` hands over a queued record during a restore.

    Faust's recovery takes each changelog record with
    ``asyncio.wait_for(changelog_queue.get(), timeout=5.0)``: on Python 3.11 a
    task, a timer and two turns of the event loop per record, ~19 µs even with
    the record already queued, and a restore reads every record of the
    changelog that way while the worker decides nothing. While
    ``hand_over_while()`` holds (the recovery restoring the active partitions),
    ``get()`` returns a ``Ready`` for a queued record, which the recovery
    module's ``wait_for`` (``install``) returns without a task; every
    ``READY_IN_A_ROW`` records, when the queue is empty and once the restore is
    over, it is Faust's own ``get()``. So standby records keep Faust's pace
    while the worker decides: a standby that took them as fast as they came kept
    up with the other worker but cost ~20% of each worker's throughput on a
    backlog (bench ``scale``, docs/performance.md); at Faust's pace it falls
    behind under a backlog and catches up after it.
    """

    def __init__(self, *args: Any, hand_over_while: Callable[[], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hand_over_while = hand_over_while
        self._ready_in_a_row = 0

    def get(self) -> Awaitable[Any]:  # type: ignore[override] - awaited like the coroutine it replaces
        if self._ready_in_a_row < READY_IN_A_ROW and self._queue and self._hand_over_while():  # type: ignore[attr-defined]
            self._ready_in_a_row += 1
            return Ready(self.get_nowait())  # what Faust's get() returns (an error first), with its pressure-drop callbacks
        self._ready_in_a_row = 0
        return super().get()


class _AsyncioForRecovery:
    """``asyncio`` as ``faust.tables.recovery`` sees it: ``wait_for`` of a ``Ready`` record is the record, no task."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def wait_for(awaitable: Awaitable[Any], timeout: float | None) -> Any:
        if type(awaitable) is Ready:
            return awaitable.item
        return await asyncio.wait_for(awaitable, timeout)


def install() -> None:
    """Let Faust's recovery take a queued changelog record without a task per record (``ChangelogQueue``); idempotent.

    Changes ``faust.tables.recovery.asyncio`` (the module's only ``wait_for`` is the
    changelog queue's, in ``Recovery._slurp_changelogs``); everything but a ``Ready``
    goes to asyncio's own ``wait_for``. Canary: tests/unit/kafka/test_recovery.py.
    """
    faust_recovery.asyncio = _AsyncioForRecovery()  # type: ignore[assignment]


class TableManager(FaustTableManager):
    """Faust's table manager with the recovery above, and a ``ChangelogQueue`` emptied once per rebalance, not per resume.

    Faust's changelog queue is cleared each time the app's flow control
    resumes. The recovery resumes it three times: before reading the active
    partitions, when it starts the standby partitions, and again at its end
    (``on_recovery_completed``, after the seek of the stream partitions).
    Standby records still queued at that last resume would be dropped, and
    nothing reads them again: the standby partition's position has moved on.
    (Found in the code; the standby losses measured in the rebalance test came
    from the fetch, ``ConsumerThread._fetch_records``.) Here the queue is cleared
    when a rebalance assigns partitions, before the recovery seeks every
    changelog partition to what it applied (whatever was still queued is
    fetched again), and the app's flow control leaves it alone.
    """

    @property
    def recovery(self) -> faust_recovery.Recovery:
        if self._recovery is None:
            self._recovery = Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery

    @property
    def changelog_queue(self) -> Any:
        if self._changelog_queue is None:
            # What app.FlowControlQueue makes, with get() above.
            self._changelog_queue = ChangelogQueue(
                maxsize=self.app.conf.stream_buffer_maxsize, flow_control=self.app.flow_control, clear_on_resume=False,
                hand_over_while=lambda: bool(self.recovery.in_recovery),
            )
        return self._changelog_queue

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0) -> None:
        self.changelog_queue.clear()  # the flow stopped at the revoke; the recovery seeks past what was applied
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
