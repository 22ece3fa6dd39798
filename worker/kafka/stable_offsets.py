"""Committed offsets asked with require_stable (OffsetFetch v7, KIP-447): a transaction committed a moment ago included."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka import errors as kafka_errors
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Boolean, CompactArray, CompactString, Int16, Int32, Int64, Schema, TaggedFields
from aiokafka.structs import TopicPartition

log = logging.getLogger("worker.stable_offsets")

# A transaction's offsets become visible to a plain OffsetFetch only once its marker reaches the group
# coordinator, after the producer's commit has returned: 288 of 300 fetches right after a commit saw the offset
# before it on a 3-broker test cluster. Asked with require_stable, the coordinator answers this until then.
UNSTABLE_OFFSET_COMMIT = 88
NO_ERROR = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
COORDINATOR_MOVED = {15, 16}  # not available, not the coordinator
# Between two asks: the usual wait (a marker a moment late) ends within the first few; an open transaction can
# hold the answer for its whole transaction.timeout.ms, asked about once a second then.
BACKOFF_SECONDS = 0.02
BACKOFF_MAX_SECONDS = 1.0
# How long a seek waits for the committed offsets before it gives up (``committed_offsets``). An open transaction
# holds UNSTABLE_OFFSET_COMMIT until its producer commits or aborts it, or until the transaction coordinator aborts
# it at its transaction.timeout.ms: 60 s by default (Faust's transactional producers use aiokafka's default, 60 s),
# found by a scan every 10 s (transaction.abort.timed.out.transaction.cleanup.interval.ms), so at most ~70 s after
# the transaction began. A producer may ask for up to the broker's transaction.max.timeout.ms (15 min): no worker
# waits that long. Faust gives the whole seek broker_request_timeout (90 s) and then silently stops the table
# recovery for good (Recovery._wait raises ServiceStopped, its loop ends): the bound comes before that.
DEADLINE_SECONDS = 80.0
FALL_BACK_SECONDS = 5.0  # at_least_once's one plain ask after the deadline, well within Faust's 90 s
LOG_EVERY_SECONDS = 10.0  # while waiting, one line this often

# What a wait ended with, as counted (``observe``): answered in time, at_least_once's plain answer, gave up.
ANSWERED, FELL_BACK, TIMED_OUT = "answered", "fell_back", "timed_out"
NO_ANSWER = "no answer"  # the error of a wait whose last step was still pending at the deadline
WaitObserver = Callable[[str, float], None]  # (outcome, seconds waited), once per call that had to wait

T = TypeVar("T")

class OffsetFetchResponse_v7(Response):  # noqa: N801 - Kafka's own names, as aiokafka spells its other versions
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                (
                    "partitions",
                    CompactArray(
                        ("partition_index", Int32),
                        ("committed_offset", Int64),
                        ("committed_leader_epoch", Int32),
                        ("metadata", CompactString("utf-8")),
                        ("error_code", Int16),
                        ("tags", TaggedFields),
                    ),
                ),
                ("tags", TaggedFields),
            ),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequest_v7(RequestStruct):  # noqa: N801
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponse_v7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetchRequest(Request[OffsetFetchRequest_v7]):
    API_KEY = 9

    def __init__(self, group_id: str, partitions: Iterable[TopicPartition], *, require_stable: bool = True) -> None:
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        self._group_id = group_id
        self._topics = [(topic, sorted(indexes), {}) for topic, indexes in sorted(by_topic.items())]
        self._require_stable = require_stable

    def build(self, request_struct_class: type[OffsetFetchRequest_v7]) -> OffsetFetchRequest_v7:
        return request_struct_class(self._group_id, self._topics, self._require_stable, {})


class UnstableOffsets(kafka_errors.KafkaError):
    """The coordinator still waits for a transaction's marker on some of these offsets; ask again."""

    retriable = True
    message = "UNSTABLE_OFFSET_COMMIT"


class StableOffsetsTimeout(kafka_errors.KafkaError):
    """The committed offsets were not answered within the deadline: the seek, and so the rebalance, fails."""

    retriable = False


def parse(response: Any) -> dict[TopicPartition, int | None]:
    """Committed offsets by partition (None: nothing committed); raises what the coordinator reported."""
    if response.error_code != NO_ERROR:
        raise error_for(response.error_code)
    offsets: dict[TopicPartition, int | None] = {}
    for topic, partitions, _tags in response.topics:
        for partition, offset, _epoch, _metadata, error_code, _partition_tags in partitions:
            if error_code == UNKNOWN_TOPIC_OR_PARTITION:
                log.warning("OffsetFetch: unknown topic %s", topic)
                continue
            if error_code != NO_ERROR:
                raise error_for(error_code)
            offsets[TopicPartition(topic, partition)] = offset if offset >= 0 else None
    return offsets


def error_for(code: int) -> kafka_errors.KafkaError:
    if code == UNSTABLE_OFFSET_COMMIT:
        return UnstableOffsets()
    return kafka_errors.for_code(code)()


async def committed_offsets(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition], *,
    fall_back: bool = False, observe: WaitObserver | None = None, deadline_seconds: float = DEADLINE_SECONDS,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[TopicPartition, int | None]:
    """The group's committed offsets of ``partitions``, waiting out offsets of transactions not yet completed.

    Retries as aiokafka's own ``fetch_committed_offsets`` does, on retriable
    errors, after finding the coordinator again where it moved, but only for
    ``deadline_seconds``: then it raises ``StableOffsetsTimeout``, unless
    ``fall_back`` is set and the coordinator's last answer was
    UNSTABLE_OFFSET_COMMIT: the offsets are then asked once without
    require_stable, i.e. those before the open transaction's (at_least_once:
    its events are decided again; never under exactly_once, where they would be
    decided twice into committed output). A wait is logged when it begins, every
    LOG_EVERY_SECONDS, and when it ends, and told to ``observe``. A broker older
    than OffsetFetch v7 (Kafka 2.5) gets aiokafka's plain request.
    """
    partitions = list(partitions)
    if not partitions:
        return {}
    coordinator = consumer._coordinator  # noqa: SLF001 - the group coordinator aiokafka's own fetch goes through
    wait = _Wait(coordinator.group_id, partitions, deadline_seconds, clock)
    request = StableOffsetFetchRequest(coordinator.group_id, partitions)
    backoff = BACKOFF_SECONDS
    while True:
        try:
            await wait.bounded(coordinator.ensure_coordinator_known())
            offsets = parse(await wait.bounded(coordinator._send_req(request)))  # noqa: SLF001
        except NotImplementedError:  # the broker's versions do not include 7
            log.warning("the broker has no OffsetFetch v7: committed offsets are asked without require_stable")
            return {tp: await consumer.committed(tp) for tp in partitions}
        except asyncio.TimeoutError:  # the deadline came during a step
            wait.error = wait.error or NO_ANSWER
        except kafka_errors.KafkaError as error:
            if not error.retriable:
                raise
            if getattr(error, "errno", None) in COORDINATOR_MOVED:
                coordinator.coordinator_dead()
            wait.failed(error)
        else:
            wait.ended(ANSWERED, observe)
            return {tp: offsets.get(tp) for tp in partitions}
        if wait.expired():
            break
        await sleep(min(backoff, wait.remaining()))
        backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
    failure: BaseException | None = None
    if fall_back and wait.error == UnstableOffsets.message:
        plain = StableOffsetFetchRequest(coordinator.group_id, partitions, require_stable=False)
        try:
            offsets = parse(await asyncio.wait_for(coordinator._send_req(plain), FALL_BACK_SECONDS))  # noqa: SLF001
        except (asyncio.TimeoutError, kafka_errors.KafkaError) as error:
            failure = error
        else:
            wait.ended(FELL_BACK, observe)
            return {tp: offsets.get(tp) for tp in partitions}
    wait.ended(TIMED_OUT, observe)
    raise StableOffsetsTimeout(
        f"the committed offsets of group {wait.group} for {wait.where} were not answered within "
        f"{deadline_seconds:g}s (last answer: {wait.error})"
    ) from failure


class _Wait:
    """One ``committed_offsets`` call's deadline, and what it logs while the coordinator makes it wait."""

    def __init__(self, group: str, partitions: list[TopicPartition], deadline_seconds: float, clock: Callable[[], float]) -> None:
        self.group = group
        self.where = describe(partitions)
        self.deadline_seconds = deadline_seconds
        self.clock = clock
        self.started = clock()
        self.error: str | None = None  # the last retriable error, by Kafka's name
        self.asks = 0
        self._next_log: float | None = None

    def remaining(self) -> float:
        return max(0.0, self.started + self.deadline_seconds - self.clock())

    def expired(self) -> bool:
        return self.remaining() <= 0

    async def bounded(self, step: Awaitable[T]) -> T:
        return await asyncio.wait_for(step, self.remaining())

    def failed(self, error: kafka_errors.KafkaError) -> None:
        self.asks += 1
        self.error = str(getattr(error, "message", None) or type(error).__name__)
        now = self.clock()
        if self._next_log is None:
            log.warning(
                "waiting for the committed offsets of group %s for %s: the coordinator answers %s%s; the seek "
                "gives up after %gs", self.group, self.where, self.error, HINTS.get(self.error, ""),
                self.deadline_seconds,
                extra={"event": "offsets_wait", "group": self.group, "partitions": self.where, "error": self.error},
            )
            self._next_log = now + LOG_EVERY_SECONDS
        elif now >= self._next_log:
            log.warning(
                "still waiting for the committed offsets of group %s for %s after %.0fs (%d asks): %s",
                self.group, self.where, now - self.started, self.asks, self.error,
                extra={"event": "offsets_wait", "group": self.group, "partitions": self.where, "error": self.error},
            )
            self._next_log = now + LOG_EVERY_SECONDS

    def ended(self, outcome: str, observe: WaitObserver | None) -> None:
        if self.error is None:
            return  # answered at once: nothing waited, nothing to tell
        seconds = self.clock() - self.started
        level, message = {
            ANSWERED: (logging.INFO, "answered after %.1fs"),
            FELL_BACK: (logging.WARNING, "not stable after %.1fs: continuing (at_least_once) from the offsets before "
                                         "the open transaction's; events after them are decided again"),
            TIMED_OUT: (logging.ERROR, "not answered within %.1fs: the seek fails"),
        }[outcome]
        log.log(
            level, "committed offsets of group %s for %s: " + message, self.group, self.where, seconds,
            extra={"event": "offsets_waited", "group": self.group, "partitions": self.where, "error": self.error,
                   "outcome": outcome, "seconds": round(seconds, 3)},
        )
        if observe is not None:
            observe(outcome, seconds)


HINTS = {
    UnstableOffsets.message: (
        " (a transaction that committed offsets for them is still open: it ends when its producer commits or "
        "aborts, or at its transaction.timeout.ms)"
    ),
}


def describe(partitions: Iterable[TopicPartition]) -> str:
    """``topic[0,1,3]``, topic by topic."""
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return " ".join(f"{topic}[{','.join(map(str, sorted(indexes)))}]" for topic, indexes in sorted(by_topic.items()))
