"""`compliance-worker dead-letters replay`: dead letters' original key, bytes and headers back onto the input topic."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from worker.commands.errors import describe_error
from worker.core.clock import format_timestamp
from worker.core.errors import ComplianceError, ErrorCode
from worker.core.policy import parse_instant
from worker.kafka.security import KafkaSecurityError, client_options, security_problem
from worker.settings import Settings
from worker.stream.processing import DEAD_LETTER_MAX_BYTES, RECORD_OVERHEAD_BYTES

# Added after the original headers (which stay as they were, in their order): which dead letter a record replays.
REPLAY_HEADER = "compliance-replay-of"
# The codes a policy decides: fixed by publishing a policy, these are decided when replayed. Every other code is
# about the message itself (its bytes or key), which a replay does not change.
POLICY_CODES = frozenset({ErrorCode.PRICE_REQUIRED.value, ErrorCode.NO_EXCHANGE_RATE.value})
MAX_IN_FLIGHT = 1000  # sends awaiting the broker's acknowledgement; order is kept by the idempotent producer
PROGRESS_EVERY_SECONDS = 0.5

# How a replay ended before the end offsets it took at the start.
LIMIT = "limit"
INTERRUPTED = "interrupted"
FAILED = "failed"

SELECTED = "selected"
SKIPPED = "skipped"
NOT_SELECTED = "not_selected"
# Why a dead letter that the filters select cannot be replayed (the keys of the summary's "skipped").
UNREADABLE = "unreadable"
PAYLOAD_OMITTED = "payload_omitted"
TOMBSTONE_WITHOUT_KEY = "tombstone_without_key"
SKIP_REASONS = {
    UNREADABLE: "not a dead-letter record",
    PAYLOAD_OMITTED: "payload omitted (read the original at its source)",
    TOMBSTONE_WITHOUT_KEY: "tombstone without key (nothing to replay)",
}


class ReplayUsageError(ComplianceError):
    """Arguments that cannot work together, or a partition the topic does not have: exit 2."""


class ReplayBrokerError(ComplianceError):
    """The broker or a topic cannot be reached before anything is published: exit 1 (may work on a retry)."""

    retriable = True


class DeadLetterRecord(NamedTuple):
    """One record of the dead-letter topic, as the broker returned it."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


class Replay(NamedTuple):
    """What replaying one dead letter publishes."""

    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes | None], ...]
    partition: int | None  # None: the producer's partitioner places it by key


class Verdict(NamedTuple):
    """What to do with one dead letter: replay it, skip it (with a reason and a line for the operator), or nothing."""

    kind: str  # SELECTED, SKIPPED or NOT_SELECTED
    code: str
    replay: Replay | None = None
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Filters:
    """Which dead letters to replay. Time is the dead letter's ``failed_at`` (``since`` inclusive, ``until``
    exclusive); offsets are the dead-letter topic's own, inclusive, in one ``partition``."""

    codes: frozenset[str] = frozenset()
    since: float | None = None
    until: float | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None

    def check(self) -> None:
        if self.partition is None and (self.from_offset is not None or self.to_offset is not None):
            raise ReplayUsageError(
                "--from-offset and --to-offset need --partition: offsets count within one partition"
            )
        if self.from_offset is not None and self.to_offset is not None and self.to_offset < self.from_offset:
            raise ReplayUsageError(f"--to-offset {self.to_offset} is before --from-offset {self.from_offset}")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ReplayUsageError(
                f"--until {format_timestamp(self.until)} is not after --since {format_timestamp(self.since)}"
            )

    def offset_range(self, partition: int, beginning: int, end: int) -> tuple[int, int]:
        """The offsets [start, stop) to read of ``partition``, whose records are [beginning, end) now."""
        if self.partition is not None and partition != self.partition:
            return end, end
        start = beginning if self.from_offset is None else max(beginning, self.from_offset)
        stop = end if self.to_offset is None else min(end, self.to_offset + 1)
        return start, max(start, stop)

    def selects(self, code: str, failed_at: float) -> bool:
        if self.codes and code not in self.codes:
            return False
        if self.since is not None and failed_at < self.since:
            return False
        return self.until is None or failed_at < self.until


def judge(
    record: DeadLetterRecord, filters: Filters, *, dead_letter_topic: str, target_topic: str,
    target_partitions: frozenset[int],
) -> Verdict:
    """Whether ``record`` is replayed, and as what: the original key (the record's key bytes, exactly), value and
    headers in their order, then REPLAY_HEADER; on the partition it came from when it goes back to its topic."""
    where = f"{dead_letter_topic} partition {record.partition} offset {record.offset}"
    letter = _parse(record.value)
    if isinstance(letter, str):
        return Verdict(SKIPPED, "", reason=UNREADABLE, detail=f"skipped {where}: not a dead-letter record ({letter})")
    code, source, failed_at, payload = letter
    when = failed_at if failed_at is not None else record.timestamp_ms / 1000.0
    if not filters.selects(code, when):
        return Verdict(NOT_SELECTED, code)
    origin = f"{source['topic']} partition {source['partition']} offset {source['offset']}"
    if code == ErrorCode.TOMBSTONE_WITHOUT_KEY:
        return Verdict(SKIPPED, code, reason=TOMBSTONE_WITHOUT_KEY)
    if isinstance(payload, int):
        return Verdict(
            SKIPPED, code, reason=PAYLOAD_OMITTED,
            detail=f"skipped {where} ({code}): its {payload:,} bytes were left out of the dead letter; "
                   f"the original is at {origin}",
        )
    key = record.key
    if key is None and source["key"] is not None:
        key = source["key"].encode("utf-8")  # the record carries no key: the JSON's copy of it is the best there is
    headers = (*record.headers, (REPLAY_HEADER, f"{dead_letter_topic}/{record.partition}/{record.offset}".encode()))
    # Back where it came from: the upstream's partitioner chose that partition (librdkafka's and Java's differ).
    partition = source["partition"] if source["topic"] == target_topic and source["partition"] in target_partitions else None
    return Verdict(SELECTED, code, Replay(key, payload, headers, partition))


def _parse(value: bytes | None) -> tuple[str, dict[str, Any], float | None, bytes | int] | str:
    """(code, source, failed_at, payload bytes or the omitted size) of a dead letter, or why it is not one."""
    if value is None:
        return "a null value"
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "not JSON"
    if not isinstance(body, dict):
        return "not a JSON object"
    error, source = body.get("error"), body.get("source")
    code = error.get("code") if isinstance(error, dict) else None
    if not isinstance(code, str) or not code:
        return "no error.code"
    if (
        not isinstance(source, dict) or not isinstance(source.get("topic"), str)
        or not isinstance(source.get("partition"), int) or not isinstance(source.get("offset"), int)
        or not isinstance(source.get("key"), (str, type(None)))
    ):
        return "no source topic, partition, offset and key"
    omitted = body.get("payload_omitted_bytes")
    if isinstance(omitted, int) and not isinstance(omitted, bool):
        payload: bytes | int = omitted
    else:
        encoded = body.get("payload_base64")
        if not isinstance(encoded, str):
            return "no payload_base64"
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return "payload_base64 is not base64"
    failed_at = body.get("failed_at")
    try:
        when = parse_instant(failed_at) if isinstance(failed_at, str) else None
    except ValueError:
        when = None  # the record's timestamp stands in
    return code, source, when, payload


@dataclass
class Summary:
    """What a replay (or its dry run) read, selected, skipped and published."""

    dead_letter_topic: str
    target_topic: str
    dry_run: bool
    started_at: float = field(default_factory=time.time)
    read: int = 0
    selected: Counter[str] = field(default_factory=Counter)  # by code
    offsets: dict[int, list[int]] = field(default_factory=dict)  # dead-letter partition -> [first, last, count]
    skipped: Counter[str] = field(default_factory=Counter)  # by reason
    not_selected: Counter[str] = field(default_factory=Counter)  # by code
    replayed: int = 0
    stopped_by: str | None = None  # LIMIT, INTERRUPTED or FAILED: it ended before the end offsets
    stopped: str | None = None  # why, for the operator
    resume: dict[int, int] = field(default_factory=dict)  # dead-letter partition -> offset to go on from
    seconds: float = 0.0

    def stop(self, kind: str, why: str) -> None:
        self.stopped_by, self.stopped = kind, why

    def count_selected(self, record: DeadLetterRecord, code: str) -> None:
        self.selected[code] += 1
        span = self.offsets.get(record.partition)
        if span is None:
            self.offsets[record.partition] = [record.offset, record.offset, 1]
        else:
            span[1] = record.offset
            span[2] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "dead_letter_topic": self.dead_letter_topic,
            "target_topic": self.target_topic,
            "started_at": format_timestamp(self.started_at),
            "read": self.read,
            "selected": self.selected.total(),
            "replayed": self.replayed,
            "by_code": dict(sorted(self.selected.items())),
            "partitions": {
                str(p): {"first_offset": first, "last_offset": last, "count": count}
                for p, (first, last, count) in sorted(self.offsets.items())
            },
            "skipped": dict(sorted(self.skipped.items())),
            "not_selected": dict(sorted(self.not_selected.items())),
            "stopped_by": self.stopped_by,
            "stopped": self.stopped,
            "resume_from": {str(p): offset for p, offset in sorted(self.resume.items())},
        }

    def render(self) -> str:
        selected = self.selected.total()
        of = f"of {self.read:,} dead letter{'s' if self.read != 1 else ''} read on {self.dead_letter_topic}"
        if self.dry_run:
            head = f"dry run: {selected:,} {of} would be replayed to {self.target_topic}; nothing was published " \
                   f"(--execute publishes)"
        else:
            head = f"replayed {self.replayed:,} {of} to {self.target_topic} in {self.seconds:.2f}s"
            if self.replayed != selected:
                head += f" ({selected - self.replayed:,} selected but not acknowledged)"
        not_selected = sum(self.not_selected.values())
        lines = [
            head,
            "  by code:      " + _counts(self.selected),
            "  from:         " + (", ".join(
                f"partition {p} " + (f"offset {first}" if first == last else f"offsets {first}-{last}") + f" ({count:,})"
                for p, (first, last, count) in sorted(self.offsets.items())
            ) or "-"),
            "  skipped:      " + (", ".join(
                f"{count:,} {SKIP_REASONS.get(reason, reason)}" for reason, count in sorted(self.skipped.items())
            ) or "none"),
            "  not selected: " + (f"{not_selected:,} ({_counts(self.not_selected)})" if not_selected else "none"),
        ]
        unchanged = {code: n for code, n in self.selected.items() if code not in POLICY_CODES}
        if unchanged:
            lines.append(
                "  note:         " + ", ".join(f"{code} {n:,}" for code, n in sorted(unchanged.items()))
                + ": a message's own bytes or key caused these; replayed unchanged they come back as dead letters "
                  "unless the worker now accepts them"
            )
        if self.stopped is not None:
            lines.append(f"  stopped:      {self.stopped}")
            lines.extend(
                f"  to go on:     --partition {p} --from-offset {offset} (with the same other filters)"
                for p, offset in sorted(self.resume.items())
            )
        if not self.dry_run and self.replayed:
            since = format_timestamp(self.started_at)
            lines.append(
                f"  next time:    dead letters of records replayed now fail after {since}: "
                f"--since {since} selects only those"
            )
        return "\n".join(lines)


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in sorted(counter.items())) or "-"


class DeadLetterSource(Protocol):
    """The dead-letter records to look at, in each partition's order; ``ranges``: partition -> [start, stop)."""

    ranges: dict[int, tuple[int, int]]

    def __aiter__(self) -> AsyncIterator[DeadLetterRecord]: ...


Send = Callable[[Replay], Awaitable["asyncio.Future[Any]"]]  # enqueue one record; the future is the broker's ack


class Progress:
    """One line on a terminal (stderr), rewritten at most twice a second, cleared at the end."""

    def __init__(self, out: TextIO, total: int, dry_run: bool) -> None:
        self.out, self.total, self.dry_run = out, total, dry_run
        self.next_at = 0.0
        self.shown = False

    def update(self, summary: Summary) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + PROGRESS_EVERY_SECONDS
        done = f"{summary.selected.total():,} selected" if self.dry_run else f"{summary.replayed:,} replayed"
        self.out.write(f"\rread {summary.read:,}/~{self.total:,} dead letters, {done} ")
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.out.write("\r\033[K")
            self.out.flush()


class _Refused(Exception):
    """The broker did not acknowledge a replayed record (wraps what it said)."""


async def replay(
    source: DeadLetterSource, choose: Callable[[DeadLetterRecord], Verdict], summary: Summary, *,
    send: Send | None, limit: int | None = None, report: Callable[[str], None] = lambda line: None,
    progress: Progress | None = None,
) -> Summary:
    """Judge every record of ``source``; with ``send`` (not a dry run), publish the selected ones in order.

    Stops at the first record the broker refuses or the first read that fails (FAILED), at ``limit`` selected
    records (LIMIT) or when cancelled by Ctrl-C (INTERRUPTED): ``summary.stopped`` says why and ``summary.resume``
    where each unfinished partition can go on from.
    """
    started = time.monotonic()
    next_offset = {partition: start for partition, (start, _stop) in source.ranges.items()}
    in_flight: deque[tuple[int, int, asyncio.Future[Any]]] = deque()
    unacknowledged: list[tuple[int, int]] = []

    async def settle(keep: int) -> None:
        # Waits while more than ``keep`` are in flight, and takes every acknowledgement (or refusal) already in.
        while in_flight and (len(in_flight) > keep or in_flight[0][2].done()):
            future = in_flight[0][2]
            try:
                await asyncio.shield(future)
            except Exception as exc:  # noqa: BLE001 - whatever the broker said ends the replay
                raise _Refused(describe_error(exc)) from exc
            in_flight.popleft()
            summary.replayed += 1

    async def drain() -> None:
        """After a failure or interruption: wait for what was sent, note what the broker did not acknowledge."""
        while in_flight:
            partition, offset, future = in_flight.popleft()
            try:
                await asyncio.shield(future)
            except Exception:  # noqa: BLE001 - counted as unacknowledged; the first error is the one reported
                unacknowledged.append((partition, offset))
            else:
                summary.replayed += 1

    try:
        async for record in source:
            summary.read += 1
            verdict = choose(record)
            if verdict.kind == SELECTED:
                assert verdict.replay is not None
                summary.count_selected(record, verdict.code)
                if send is not None:
                    try:
                        future = await send(verdict.replay)
                    except Exception as exc:  # noqa: BLE001 - refused before sending (e.g. too large): same as by the broker
                        unacknowledged.append((record.partition, record.offset))
                        raise _Refused(describe_error(exc)) from exc
                    in_flight.append((record.partition, record.offset, future))
                    await settle(MAX_IN_FLIGHT)
            elif verdict.kind == SKIPPED:
                summary.skipped[verdict.reason or UNREADABLE] += 1
                if verdict.detail:
                    report(verdict.detail)
            else:
                summary.not_selected[verdict.code] += 1
            next_offset[record.partition] = record.offset + 1
            if progress is not None:
                progress.update(summary)
            if limit is not None and summary.selected.total() >= limit:
                summary.stop(LIMIT, f"--limit {limit} reached")
                break
        await settle(0)
    except asyncio.CancelledError:
        summary.stop(INTERRUPTED, "interrupted (Ctrl-C)")
        await drain()
    except _Refused as exc:
        summary.stop(FAILED, f"the broker did not acknowledge a record: {exc}")
        await drain()
    except (KafkaError, OSError) as exc:
        summary.stop(FAILED, f"reading {summary.dead_letter_topic} failed: {describe_error(exc)}")
        await drain()
    finally:
        if progress is not None:
            progress.clear()
        summary.seconds = time.monotonic() - started
    if summary.stopped is not None:
        earliest: dict[int, int] = {}
        for partition, offset in unacknowledged:
            earliest[partition] = min(offset, earliest.get(partition, offset))
        for partition, (_start, stop) in source.ranges.items():
            resume = min(earliest.get(partition, stop), next_offset[partition])
            if resume < stop:
                summary.resume[partition] = resume
    return summary



# --- Kafka ----------------------------------------------------------------------------------------------------


class KafkaDeadLetters:
    """The dead-letter topic read read_committed without a consumer group (nothing is committed), from the filters'
    start to each partition's end offset taken when it opens: records failed while it runs are not read."""

    def __init__(self, settings: Settings, filters: Filters, target_topic: str, timeout: float) -> None:
        self.settings, self.filters, self.target_topic, self.timeout = settings, filters, target_topic, timeout
        self.ranges: dict[int, tuple[int, int]] = {}
        self.target_partitions: frozenset[int] = frozenset()
        self._consumer: Any = None

    async def open(self) -> None:
        settings, topic = self.settings, self.settings.dead_letter_topic
        options = {
            "bootstrap_servers": settings.bootstrap_servers, "request_timeout_ms": int(self.timeout * 1000),
            **client_options(settings),
        }
        admin = AIOKafkaAdminClient(**options)
        try:
            await asyncio.wait_for(admin.start(), self.timeout)
            # all topics first: asking for one by name may have a broker create it (auto.create.topics.enable)
            known = set(await asyncio.wait_for(admin.list_topics(), self.timeout))
            for name, what in ((topic, f"dead-letter topic {topic} (DEAD_LETTER_TOPIC)"),
                               (self.target_topic, f"topic {self.target_topic} to replay to")):
                if name not in known:
                    raise ReplayBrokerError(f"the {what} does not exist at {settings.kafka_bootstrap_servers}")
            described = await asyncio.wait_for(admin.describe_topics([topic, self.target_topic]), self.timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise ReplayBrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {describe_error(exc)}") from None
        finally:
            await admin.close()
        partitions_of = {t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described}
        partitions = partitions_of.get(topic, [])
        self.target_partitions = frozenset(partitions_of.get(self.target_topic, ()))
        wanted = self.filters.partition
        if wanted is not None and wanted not in partitions:
            raise ReplayUsageError(
                f"--partition {wanted}: {topic} has partition{'s' if len(partitions) != 1 else ''} "
                f"{_partition_list(partitions)}"
            )
        self._consumer = consumer = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, isolation_level="read_committed", auto_offset_reset="earliest",
            # a dead letter may be as large as the topic the worker creates allows
            max_partition_fetch_bytes=DEAD_LETTER_MAX_BYTES + RECORD_OVERHEAD_BYTES, **options,
        )
        try:
            await asyncio.wait_for(consumer.start(), self.timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise ReplayBrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {describe_error(exc)}") from None
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        try:
            beginnings = await asyncio.wait_for(consumer.beginning_offsets(assigned), self.timeout)
            ends = await asyncio.wait_for(consumer.end_offsets(assigned), self.timeout)  # last stable offsets
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise ReplayBrokerError(f"cannot read the offsets of {topic}: {describe_error(exc)}") from None
        for tp in assigned:
            self.ranges[tp.partition] = self.filters.offset_range(tp.partition, beginnings[tp], ends[tp])

    async def __aiter__(self) -> AsyncIterator[DeadLetterRecord]:
        consumer, topic = self._consumer, self.settings.dead_letter_topic
        active = {}
        for partition, (start, stop) in self.ranges.items():
            tp = TopicPartition(topic, partition)
            if start < stop:
                consumer.seek(tp, start)
                active[tp] = stop
        consumer.pause(*[tp for tp in consumer.assignment() if tp not in active])
        while active:
            batches = await consumer.getmany(*active, timeout_ms=1000)
            for tp, messages in batches.items():
                stop = active.get(tp)
                for message in messages:
                    if stop is None or message.offset >= stop:
                        break
                    yield DeadLetterRecord(
                        message.partition, message.offset, message.timestamp, message.key, message.value,
                        tuple(message.headers or ()),
                    )
            for tp in list(active):
                # the position passes aborted records and transaction markers too, so this ends on every partition
                if await consumer.position(tp) >= active[tp]:
                    del active[tp]
                    consumer.pause(tp)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


def _partition_list(partitions: Iterable[int]) -> str:
    numbers = list(partitions)
    if not numbers:
        return "none"
    return f"{numbers[0]}-{numbers[-1]}" if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 1 \
        else ", ".join(map(str, numbers))


class KafkaReplayer:
    """An idempotent producer with acks=all: the broker keeps each partition's records in the order sent, once."""

    def __init__(self, settings: Settings, topic: str, timeout: float) -> None:
        self.settings, self.topic, self.timeout = settings, topic, timeout
        self._producer: Any = None

    async def start(self) -> None:
        settings = self.settings
        codec = settings.kafka_compression_type
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True, linger_ms=5,
            compression_type=None if codec == "none" else codec,
            # the originals of the largest dead letters; a topic with a smaller limit refuses them, and says so
            max_request_size=DEAD_LETTER_MAX_BYTES, request_timeout_ms=int(self.timeout * 1000),
            **client_options(settings),
        )
        try:
            await asyncio.wait_for(self._producer.start(), self.timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise ReplayBrokerError(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {describe_error(exc)}") from None

    async def send(self, record: Replay) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self._producer.send(
            self.topic, record.value, key=record.key, partition=record.partition, headers=list(record.headers),
        )
        return future

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()


async def replay_from_kafka(
    settings: Settings, filters: Filters, *, target_topic: str, execute: bool, limit: int | None, timeout: float,
    report: Callable[[str], None], progress_out: TextIO | None,
) -> Summary:
    source = KafkaDeadLetters(settings, filters, target_topic, timeout)
    replayer = KafkaReplayer(settings, target_topic, timeout) if execute else None
    summary = Summary(settings.dead_letter_topic, target_topic, dry_run=not execute)
    try:
        await source.open()
        if replayer is not None:
            await replayer.start()
        total = sum(stop - start for start, stop in source.ranges.values())
        progress = Progress(progress_out, total, not execute) if progress_out is not None else None

        def choose(record: DeadLetterRecord) -> Verdict:
            return judge(
                record, filters, dead_letter_topic=settings.dead_letter_topic, target_topic=target_topic,
                target_partitions=source.target_partitions,
            )

        return await replay(
            source, choose, summary, send=replayer.send if replayer is not None else None, limit=limit,
            report=report, progress=progress,
        )
    finally:
        if replayer is not None:
            await replayer.stop()
        await source.close()


def run_replay(
    env: Mapping[str, str], filters: Filters, *, to_topic: str | None, execute: bool, limit: int | None,
    timeout: float, as_json: bool, bootstrap: str | None = None,
) -> int:
    """The command: 0 when it read to the end (or --limit) and everything selected was published (or, in a dry
    run, would be); 1 when the broker failed; 130 when interrupted. Usage errors raise ReplayUsageError (exit 2)."""
    overrides = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap} if bootstrap else {}
    settings = Settings.from_env({**env, **overrides})
    filters.check()
    target = to_topic or settings.input_topic
    if target == settings.dead_letter_topic:
        raise ReplayUsageError(f"refusing to replay {target} onto itself: --to-topic is the DEAD_LETTER_TOPIC")

    def report(line: str) -> None:
        sys.stderr.write(f"compliance-worker dead-letters replay: {line}\n")

    # aiokafka logs each failed connection attempt; the one line of the error says what went wrong instead.
    aiokafka_log = logging.getLogger("aiokafka")
    level, aiokafka_log.level = aiokafka_log.level, logging.CRITICAL
    try:
        summary = asyncio.run(replay_from_kafka(
            settings, filters, target_topic=target, execute=execute, limit=limit, timeout=timeout, report=report,
            progress_out=sys.stderr if sys.stderr.isatty() else None,
        ))
    except KeyboardInterrupt:
        report("interrupted while connecting; nothing was published")
        return 130
    except ReplayBrokerError:
        # a refused TLS handshake or password looks like "cannot connect": say which, and that retrying won't help
        problem = asyncio.run(security_problem(settings, min(timeout, 10.0)))
        if problem is not None:
            raise KafkaSecurityError(f"cannot connect to Kafka: {problem}") from None
        raise
    finally:
        aiokafka_log.setLevel(level)
    if as_json:
        sys.stdout.write(orjson.dumps(summary.as_dict()).decode() + "\n")
    else:
        sys.stdout.write(summary.render() + "\n")
    sys.stdout.flush()
    return {INTERRUPTED: 130, FAILED: 1}.get(summary.stopped_by or "", 0)
