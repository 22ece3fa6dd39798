"""The wait for stable committed offsets is bounded, logged and counted; at the bound it fails, or (at_least_once) falls back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pytest
from aiokafka import errors as kafka_errors
from aiokafka.structs import TopicPartition

from worker.kafka import stable_offsets
from worker.kafka.stable_offsets import (
    ANSWERED, DEADLINE_SECONDS, FELL_BACK, TIMED_OUT, UNSTABLE_OFFSET_COMMIT, OffsetFetchResponse_v7,
    StableOffsetFetchRequest, StableOffsetsTimeout, committed_offsets,
)

GROUP = "cw-input"
PARTITIONS = [TopicPartition("input", 0), TopicPartition("input", 3)]
COORDINATOR_NOT_AVAILABLE = 15


class Clock:
    """Monotonic time that moves only when the code under test sleeps; a wait that never ends fails the test."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds
        unbounded = self.now - 1_000.0 > DEADLINE_SECONDS + 60 or len(self.slept) > 1_000
        assert not unbounded, "still asking long after the deadline: the wait is unbounded"


class Coordinator:
    """aiokafka's group coordinator as ``committed_offsets`` uses it, answering OffsetFetch v7 from aiokafka's classes.

    A request asking require_stable gets ``stable_errors`` (one per ask) until they run out, then ``committed``;
    one without gets ``plain`` (the offsets before an open transaction's).
    """

    group_id = GROUP

    def __init__(self, committed: Mapping[TopicPartition, int | None], stable_errors: list[int] | None = None,
                 plain: Mapping[TopicPartition, int | None] | None = None, forever: int | None = None) -> None:
        self.committed = committed
        self.stable_errors = list(stable_errors or [])
        self.forever = forever  # answer this error to every require_stable ask
        self.plain = plain
        self.asked: list[bool] = []  # require_stable of each request
        self.dead = 0

    async def ensure_coordinator_known(self) -> None:
        return None

    def coordinator_dead(self) -> None:
        self.dead += 1

    async def _send_req(self, request: StableOffsetFetchRequest) -> OffsetFetchResponse_v7:
        asked = request.prepare({9: (0, 9)})
        self.asked.append(asked.require_stable)
        if asked.require_stable:
            error = self.forever if self.forever is not None else (self.stable_errors.pop(0) if self.stable_errors else 0)
            offsets = self.committed
        else:
            assert self.plain is not None, "asked without require_stable"
            error, offsets = 0, self.plain
        if error:
            return OffsetFetchResponse_v7(0, [], error, {})
        topics = [
            (topic, [(p, -1 if (o := offsets.get(TopicPartition(topic, p))) is None else o, -1, "", 0, {}) for p in indexes], {})
            for topic, indexes, _tags in asked.topics
        ]
        return OffsetFetchResponse_v7(0, topics, 0, {})


class Consumer:
    def __init__(self, coordinator: Any) -> None:
        self._coordinator = coordinator


class Observed:
    def __init__(self) -> None:
        self.waits: list[tuple[str, float]] = []

    def __call__(self, outcome: str, seconds: float) -> None:
        self.waits.append((outcome, seconds))


def ask(coordinator: Any, clock: Clock, observed: Observed, **options: Any) -> dict[TopicPartition, int | None]:
    return asyncio.run(committed_offsets(
        Consumer(coordinator), PARTITIONS, observe=observed, clock=clock, sleep=clock.sleep, **options,  # type: ignore[arg-type]
    ))


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "worker.stable_offsets"]


def test_an_answer_at_once_is_neither_logged_nor_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock, observed = Clock(), Observed()
    assert ask(Coordinator({PARTITIONS[0]: 7}), clock, observed) == {PARTITIONS[0]: 7, PARTITIONS[1]: None}
    assert observed.waits == [] and lines(caplog) == [] and clock.slept == []


def test_an_open_transaction_is_waited_out_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "worker.stable_offsets")
    clock, observed = Clock(), Observed()
    coordinator = Coordinator({PARTITIONS[0]: 7, PARTITIONS[1]: 9}, stable_errors=[UNSTABLE_OFFSET_COMMIT] * 3)
    assert ask(coordinator, clock, observed) == {PARTITIONS[0]: 7, PARTITIONS[1]: 9}
    assert coordinator.asked == [True] * 4
    assert observed.waits == [(ANSWERED, pytest.approx(0.02 + 0.04 + 0.08))]
    waiting, answered = lines(caplog)
    assert f"group {GROUP} for input[0,3]" in waiting and "UNSTABLE_OFFSET_COMMIT" in waiting
    assert "transaction" in waiting and f"gives up after {DEADLINE_SECONDS:g}s" in waiting
    assert answered.startswith(f"committed offsets of group {GROUP} for input[0,3]: answered after 0.1s")


def test_a_long_wait_is_logged_every_ten_seconds_and_asked_about_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    clock, observed = Clock(), Observed()
    coordinator = Coordinator({PARTITIONS[0]: 7}, stable_errors=[UNSTABLE_OFFSET_COMMIT] * 40)
    ask(coordinator, clock, observed)
    waited = observed.waits[0][1]
    assert 30 < waited < 40
    still = [line for line in lines(caplog) if line.startswith("still waiting")]
    assert len(still) == 3, lines(caplog)  # after about 10, 20 and 30 s
    assert max(clock.slept) == stable_offsets.BACKOFF_MAX_SECONDS


def test_exactly_once_gives_up_at_the_deadline_and_the_seek_fails(caplog: pytest.LogCaptureFixture) -> None:
    clock, observed = Clock(), Observed()
    coordinator = Coordinator({PARTITIONS[0]: 7}, forever=UNSTABLE_OFFSET_COMMIT)
    with pytest.raises(StableOffsetsTimeout, match=r"input\[0,3\] were not answered within 80s .*UNSTABLE_OFFSET_COMMIT"):
        ask(coordinator, clock, observed, fall_back=False)
    assert not StableOffsetsTimeout.retriable
    assert observed.waits == [(TIMED_OUT, pytest.approx(DEADLINE_SECONDS))]
    assert False not in coordinator.asked, "never the offsets before an open transaction under exactly_once"
    assert lines(caplog)[-1].endswith("not answered within 80.0s: the seek fails")


def test_at_least_once_goes_on_from_the_offsets_before_the_open_transaction_at_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, observed = Clock(), Observed()
    coordinator = Coordinator({PARTITIONS[0]: 7}, forever=UNSTABLE_OFFSET_COMMIT, plain={PARTITIONS[0]: 5})
    assert ask(coordinator, clock, observed, fall_back=True) == {PARTITIONS[0]: 5, PARTITIONS[1]: None}
    assert coordinator.asked[-1] is False and coordinator.asked.count(False) == 1
    assert observed.waits == [(FELL_BACK, pytest.approx(DEADLINE_SECONDS))]
    assert "decided again" in lines(caplog)[-1]


def test_at_least_once_does_not_fall_back_when_the_coordinator_never_answered(caplog: pytest.LogCaptureFixture) -> None:
    clock, observed = Clock(), Observed()
    coordinator = Coordinator({PARTITIONS[0]: 7}, forever=COORDINATOR_NOT_AVAILABLE, plain={PARTITIONS[0]: 5})
    with pytest.raises(StableOffsetsTimeout, match="COORDINATOR_NOT_AVAILABLE"):
        ask(coordinator, clock, observed, fall_back=True)
    assert False not in coordinator.asked
    assert coordinator.dead == len(coordinator.asked), "a coordinator that moved is looked up again"
    assert observed.waits == [(TIMED_OUT, pytest.approx(DEADLINE_SECONDS))]


def test_a_request_that_never_returns_is_bounded_too() -> None:
    class Silent(Coordinator):
        async def _send_req(self, request: StableOffsetFetchRequest) -> OffsetFetchResponse_v7:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    observed = Observed()
    with pytest.raises(StableOffsetsTimeout, match="no answer"):
        asking = committed_offsets(Consumer(Silent({})), PARTITIONS, observe=observed, deadline_seconds=0.05)  # type: ignore[arg-type]
        asyncio.run(asyncio.wait_for(asking, 10))  # without the bound: TimeoutError, not StableOffsetsTimeout
    assert [outcome for outcome, _seconds in observed.waits] == [TIMED_OUT]


def test_errors_that_are_not_retriable_end_the_wait_at_once() -> None:
    clock, observed = Clock(), Observed()
    group_authorization_failed = kafka_errors.GroupAuthorizationFailedError.errno
    with pytest.raises(kafka_errors.GroupAuthorizationFailedError):
        ask(Coordinator({}, forever=group_authorization_failed), clock, observed)
    assert clock.slept == []
