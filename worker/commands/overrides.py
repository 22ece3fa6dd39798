"""`compliance-worker override set|clear|list`: per-product overrides on the compacted OVERRIDES_TOPIC."""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from worker.commands.errors import describe_error
from worker.core.clock import format_timestamp
from worker.core.errors import ComplianceError
from worker.core.event import MAX_ID_LENGTH
from worker.core.overrides import InvalidOverride, Override, parse_override
from worker.core.policy import parse_instant
from worker.kafka.security import KafkaSecurityError, client_options, security_problem
from worker.kafka.topics import ensure_compacted_topic
from worker.settings import Settings

IN_FORCE = "in_force"
EXPIRED = "expired"
INVALID = "invalid"
STATUS_TEXT = {IN_FORCE: "in force", EXPIRED: "expired", INVALID: "invalid"}
REASON_WIDTH = 60  # the table shortens reasons to this; `--json` has them whole
TOPIC_WAIT_SECONDS = 10.0  # for a topic just created to show in the broker's metadata
# The flag each field of the document comes from, so a validation message names what the person typed.
FLAGS = {"decision": "--decision", "reason": "--reason", "reference": "--reference", "author": "--author",
         "expires_at": "--expires"}


class OverrideUsageError(ComplianceError):
    """An argument or setting that cannot work (retrying will not help): exit 2."""


class OverrideBrokerError(ComplianceError):
    """The broker cannot be reached, or did not acknowledge: exit 1 (may work on a retry)."""

    retriable = True


# --- the document -----------------------------------------------------------------------------------------------


def rfc3339_millis(epoch_seconds: float) -> str:
    """UTC with milliseconds, rounded to the nearest (clock.format_timestamp truncates: .123 may come out .122)."""
    millis = round(epoch_seconds * 1000)
    moment = datetime.fromtimestamp(millis // 1000, timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{millis % 1000:03d}Z"


def product_key(product_id: str) -> bytes:
    """The record key for ``product_id``; raises OverrideUsageError for ids no product can have."""
    if not product_id:
        raise OverrideUsageError("PRODUCT_ID: must not be empty")
    if len(product_id) > MAX_ID_LENGTH:
        raise OverrideUsageError(f"PRODUCT_ID: longer than {MAX_ID_LENGTH} characters (no product id is)")
    try:
        return product_id.encode("utf-8")
    except UnicodeEncodeError:
        raise OverrideUsageError("PRODUCT_ID: not valid UTF-8") from None


def build_override(
    product_id: str, *, decision: str | None, reason: str | None, reference: str | None, author: str | None,
    expires: str | None, now: float,
) -> tuple[bytes, bytes, Override]:
    """(key, value, the override as the worker will read it) for ``override set``, validated by the worker's own
    ``parse_override``; expires_at is written in UTC with milliseconds and must be after ``now``."""
    key = product_key(product_id)
    document: dict[str, Any] = {
        "decision": decision, "reason": reason, "reference": reference, "author": author,
        "created_at": format_timestamp(now),
    }
    if expires is not None:
        try:
            expires_at = parse_instant(expires)
        except ValueError as exc:
            raise OverrideUsageError(f"--expires: {exc}") from None
        if expires_at <= now:
            raise OverrideUsageError(
                f"--expires {expires} is not in the future (now: {format_timestamp(now)}): the override would never "
                "be in force"
            )
        document["expires_at"] = rfc3339_millis(expires_at)
    value = orjson.dumps(document)
    try:
        override = parse_override(key, value)
    except InvalidOverride as exc:
        raise OverrideUsageError(_with_flag(exc.message)) from None
    return key, value, override


def _with_flag(message: str) -> str:
    field, colon, rest = message.partition(":")
    return f"{FLAGS[field]}:{rest}" if colon and field in FLAGS else message


def default_author() -> str:
    """The OS user, as ``getpass.getuser`` finds it."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        raise OverrideUsageError("cannot tell who you are (no login name for this user): pass --author NAME") from None


# --- reading the topic ------------------------------------------------------------------------------------------


class OverrideRecord(NamedTuple):
    """One record of the overrides topic, as the broker returned it."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


class Entry(NamedTuple):
    """A product's latest record: its override, or why that record is not one (then the product has none)."""

    product_id: str | None  # None: the record has no key
    partition: int
    offset: int
    timestamp_ms: int
    override: Override | None
    error: str | None

    def status(self, now: float) -> str:
        if self.override is None:
            return INVALID
        return IN_FORCE if self.override.in_force(now) else EXPIRED

    def as_dict(self, now: float, topic: str) -> dict[str, Any]:
        described = self.override.describe() if self.override is not None else dict.fromkeys(
            ("decision", "reason", "reference", "author", "created_at", "expires_at")
        )
        return {
            "product_id": self.product_id, "status": self.status(now), **described, "error": self.error,
            "topic": topic, "partition": self.partition, "offset": self.offset,
        }


def fold(records: Iterable[OverrideRecord]) -> dict[Any, Entry]:
    """The latest record per product (a tombstone removes it), each in the order of its partition.

    A product's records share a partition as long as the topic keeps its partition count; should one turn up in
    two partitions, the later record timestamp wins. Records without a key belong to no product: each is an
    invalid entry of its own.
    """
    latest: dict[Any, Entry] = {}
    for record in records:
        slot: Any = record.key if record.key is not None else ("no key", record.partition, record.offset)
        before = latest.get(slot)
        if before is not None and before.partition != record.partition and before.timestamp_ms > record.timestamp_ms:
            continue
        if record.value is None:
            latest.pop(slot, None)
            continue
        product_id = record.key.decode("utf-8", "backslashreplace") if record.key is not None else None
        try:
            override: Override | None = parse_override(record.key, record.value)
            error = None
        except InvalidOverride as exc:
            override, error = None, exc.message
        latest[slot] = Entry(product_id, record.partition, record.offset, record.timestamp_ms, override, error)
    return latest


def listed(latest: Mapping[Any, Entry], now: float, *, active: bool) -> list[Entry]:
    """The entries to show, by product id; ``active``: only overrides in force at ``now``."""
    entries = sorted(latest.values(), key=lambda entry: (entry.product_id or "", entry.partition, entry.offset))
    return [entry for entry in entries if not active or entry.status(now) == IN_FORCE]


def _cell(text: str | None, width: int | None = None) -> str:
    """One table cell: control characters escaped (a key or reason may hold a newline), long text shortened."""
    if text is None:
        return "-"
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    if width is not None and len(shown) > width:
        shown = shown[: width - 1] + "…"
    return shown


COLUMNS = ("PRODUCT", "DECISION", "STATUS", "EXPIRES", "REFERENCE", "AUTHOR", "CREATED_AT", "REASON")


def render_table(entries: list[Entry], now: float) -> list[str]:
    rows = []
    for entry in entries:
        if entry.product_id is None:
            product = f"(no key: partition {entry.partition} offset {entry.offset})"
        else:
            product = _cell(entry.product_id) if entry.product_id else '""'
        override = entry.override
        if override is None:
            rows.append((product, "-", STATUS_TEXT[INVALID], "-", "-", "-", "-", _cell(entry.error)))
            continue
        rows.append((
            product, override.decision, STATUS_TEXT[entry.status(now)], override.expires_at or "never",
            _cell(override.reference), _cell(override.author), override.created_at,
            _cell(override.reason, REASON_WIDTH),
        ))
    widths = [max([len(column), *(len(row[index]) for row in rows)]) for index, column in enumerate(COLUMNS)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [COLUMNS, *rows]
    ]


def summary_line(latest: Mapping[Any, Entry], now: float, *, topic: str, where: str, records: int, active: bool) -> str:
    counts = {IN_FORCE: 0, EXPIRED: 0, INVALID: 0}
    for entry in latest.values():
        counts[entry.status(now)] += 1
    total = sum(counts.values())
    head = f"{total:,} product{'s' if total != 1 else ''} with an override record on {topic} at {where}"
    detail = f"{counts[IN_FORCE]:,} in force, {counts[EXPIRED]:,} expired, {counts[INVALID]:,} invalid"
    shown = " (--active: only those in force shown)" if active and counts[IN_FORCE] != total else ""
    return f"{head}: {detail}{shown}; {records:,} record{'s' if records != 1 else ''} read as of {format_timestamp(now)}"


def describe_previous(entry: Entry | None, now: float) -> str:
    """What a cleared product had before the tombstone, for a person."""
    if entry is None:
        return "it had none"
    override = entry.override
    if override is None:
        return f"its latest record was invalid ({entry.error}), so none was in force"
    until = f"until {override.expires_at}" if override.expires_at else "until cleared"
    if not override.in_force(now):
        return f"it had {override.decision}, set by {override.author} at {override.created_at}, expired at " \
               f"{override.expires_at}"
    return f"it had {override.decision} in force {until}, set by {override.author} at {override.created_at}"


# --- Kafka ------------------------------------------------------------------------------------------------------


class Published(NamedTuple):
    topic: str
    partition: int
    offset: int
    created_topic: bool
    partitions: int
    warnings: tuple[str, ...]



def _options(settings: Settings, timeout: float) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.bootstrap_servers, "request_timeout_ms": int(timeout * 1000),
        **client_options(settings),
    }


async def _topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> list[int] | None:
    """The topic's partitions, or None when it does not exist (asked without having the broker create it)."""
    # Listing all topics first: a metadata request naming a missing topic makes brokers with
    # auto.create.topics.enable (Kafka's default) create it, not compacted.
    if topic not in set(await admin.list_topics()):
        return None
    described = await admin.describe_topics([topic])
    return sorted(partition["partition"] for topic_info in described for partition in topic_info["partitions"])


async def _existing_topic_warnings(admin: AIOKafkaAdminClient, topic: str) -> tuple[str, ...]:
    """What is off about an existing overrides topic (it is never altered: that is an operator's call)."""
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"cleanup.policy": None})])
    values = {entry[0]: entry[1] for response in responses for resource in response.resources for entry in resource[4]}
    cleanup = values.get("cleanup.policy")
    if cleanup is not None and "compact" not in cleanup.split(","):
        return (f"topic {topic} has cleanup.policy={cleanup}, not compact: overrides vanish with retention and "
                "cleared ones are kept until then",)
    return ()


async def prepare_topic(admin: AIOKafkaAdminClient, settings: Settings, topic: str) -> tuple[bool, int, tuple[str, ...]]:
    """Make sure the overrides topic exists (created compacted when missing): (created, partitions, warnings)."""
    partitions = await _topic_partitions(admin, topic)
    if partitions is not None:
        return False, len(partitions), await _existing_topic_warnings(admin, topic)
    brokers = len((await admin.describe_cluster()).get("brokers") or ())
    if brokers and settings.topic_replication_factor > brokers:
        raise OverrideUsageError(
            f"cannot create topic {topic}: TOPIC_REPLICATION_FACTOR={settings.topic_replication_factor} but the cluster "
            f"at {settings.kafka_bootstrap_servers} has {brokers} broker{'s' if brokers != 1 else ''}"
        )
    created = await ensure_compacted_topic(admin, topic, settings.topic_partitions, settings.topic_replication_factor)
    # ensure_compacted_topic cannot tell a refused creation (e.g. not authorised) from a done one: look.
    deadline = time.monotonic() + TOPIC_WAIT_SECONDS
    while (partitions := await _topic_partitions(admin, topic)) is None:
        if time.monotonic() > deadline:
            raise OverrideBrokerError(
                f"topic {topic} does not exist at {settings.kafka_bootstrap_servers} {TOPIC_WAIT_SECONDS:.0f}s after "
                f"creating it ({settings.topic_partitions} partitions, replication factor "
                f"{settings.topic_replication_factor}): may this account create topics?"
            )
        await asyncio.sleep(0.2)
    warnings = () if created else await _existing_topic_warnings(admin, topic)
    return created, len(partitions), warnings


async def publish_record(
    settings: Settings, topic: str, key: bytes, value: bytes | None, timeout: float,
) -> Published:
    """Produce one record (``value`` None: a tombstone) with acks=all by an idempotent producer, after creating the
    topic if it is missing."""
    where = settings.kafka_bootstrap_servers
    admin = AIOKafkaAdminClient(**_options(settings, timeout))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        created, partitions, warnings = await asyncio.wait_for(prepare_topic(admin, settings, topic), timeout)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise OverrideBrokerError(f"cannot reach Kafka at {where}: {describe_error(exc)}") from None
    finally:
        await admin.close()
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **_options(settings, timeout))
    try:
        await asyncio.wait_for(producer.start(), timeout)
        metadata = await asyncio.wait_for(producer.send_and_wait(topic, value, key=key), timeout)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        raise OverrideBrokerError(f"cannot publish to {topic} at {where}: {describe_error(exc)}") from None
    finally:
        await producer.stop()
    return Published(metadata.topic, metadata.partition, metadata.offset, created, partitions, warnings)


class TopicReader:
    """Records of the overrides topic read read_committed without a consumer group (nothing is committed), from
    each partition's beginning to its end offset taken when it opens (or to ``stops``)."""

    def __init__(self, settings: Settings, topic: str, timeout: float) -> None:
        self.settings, self.topic, self.timeout = settings, topic, timeout
        self.exists = False
        self.ranges: dict[int, tuple[int, int]] = {}
        self._consumer: Any = None

    async def open(self, stops: Mapping[int, int] | None = None) -> None:
        """Look the topic up and take the offsets to read; ``stops``: only these partitions, up to these offsets."""
        admin = AIOKafkaAdminClient(**_options(self.settings, self.timeout))
        where = self.settings.kafka_bootstrap_servers
        try:
            await asyncio.wait_for(admin.start(), self.timeout)
            partitions = await asyncio.wait_for(_topic_partitions(admin, self.topic), self.timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise OverrideBrokerError(f"cannot reach Kafka at {where}: {describe_error(exc)}") from None
        finally:
            await admin.close()
        if partitions is None:
            return
        self.exists = True
        self._consumer = consumer = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, isolation_level="read_committed", auto_offset_reset="earliest",
            **_options(self.settings, self.timeout),
        )
        assigned = [TopicPartition(self.topic, p) for p in partitions if stops is None or p in stops]
        try:
            await asyncio.wait_for(consumer.start(), self.timeout)
            consumer.assign(assigned)
            beginnings = await asyncio.wait_for(consumer.beginning_offsets(assigned), self.timeout)
            ends = await asyncio.wait_for(consumer.end_offsets(assigned), self.timeout)  # last stable offsets
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise OverrideBrokerError(f"cannot read {self.topic} at {where}: {describe_error(exc)}") from None
        for tp in assigned:
            stop = ends[tp] if stops is None else min(ends[tp], stops[tp.partition])
            self.ranges[tp.partition] = (beginnings[tp], max(beginnings[tp], stop))

    async def __aiter__(self) -> AsyncIterator[OverrideRecord]:
        consumer = self._consumer
        active: dict[TopicPartition, int] = {}
        for partition, (start, stop) in self.ranges.items():
            tp = TopicPartition(self.topic, partition)
            if start < stop:
                consumer.seek(tp, start)
                active[tp] = stop
        consumer.pause(*[tp for tp in consumer.assignment() if tp not in active])
        stalled_since = time.monotonic()
        while active:
            unfinished = len(active)
            try:
                batches = await consumer.getmany(*active, timeout_ms=500)
                for tp, messages in batches.items():
                    stop = active.get(tp)
                    for message in messages:
                        if stop is None or message.offset >= stop:
                            break
                        yield OverrideRecord(message.partition, message.offset, message.timestamp, message.key,
                                             message.value)
                for tp in list(active):
                    # the position passes aborted records and transaction markers too, so this ends on every partition
                    if await consumer.position(tp) >= active[tp]:
                        del active[tp]
                        consumer.pause(tp)
            except (KafkaError, OSError) as exc:
                raise OverrideBrokerError(f"reading {self.topic} failed: {describe_error(exc)}") from None
            if batches or len(active) < unfinished:
                stalled_since = time.monotonic()
            elif time.monotonic() - stalled_since > self.timeout:
                behind = ", ".join(f"partition {tp.partition} at {await consumer.position(tp)} of {stop}"
                                   for tp, stop in sorted(active.items()))
                raise OverrideBrokerError(f"reading {self.topic} made no progress for {self.timeout:.0f}s ({behind})")

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


async def read_latest(
    settings: Settings, topic: str, timeout: float, stops: Mapping[int, int] | None = None,
) -> tuple[bool, dict[Any, Entry], int]:
    """(the topic exists, the latest entry per product, records read)."""
    reader = TopicReader(settings, topic, timeout)
    try:
        await reader.open(stops)
        if not reader.exists:
            return False, {}, 0
        records = [record async for record in reader]
        return True, fold(records), len(records)
    finally:
        await reader.close()


# --- the commands -----------------------------------------------------------------------------------------------


def _settings(env: Mapping[str, str], bootstrap: str | None, topic: str | None) -> Settings:
    changes = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "OVERRIDES_TOPIC": topic}
    return Settings.from_env({**env, **{name: value for name, value in changes.items() if value is not None}})


def _run_kafka(settings: Settings, timeout: float, work: Callable[[], Any]) -> Any:
    """``asyncio.run(work())`` with aiokafka's connection noise muted; a refused handshake or password said as such."""
    # aiokafka logs each failed connection attempt; the one line of the error says what went wrong instead.
    aiokafka_log = logging.getLogger("aiokafka")
    level, aiokafka_log.level = aiokafka_log.level, logging.CRITICAL
    try:
        return asyncio.run(work())
    except OverrideBrokerError:
        problem = asyncio.run(security_problem(settings, min(timeout, 10.0)))
        if problem is not None:
            raise KafkaSecurityError(f"cannot connect to Kafka: {problem}") from None
        raise
    finally:
        aiokafka_log.setLevel(level)


def _warn(command: str, warnings: Iterable[str]) -> None:
    for warning in warnings:
        sys.stderr.write(f"compliance-worker override {command}: warning: {warning}\n")


def _created(published: Published) -> str:
    if not published.created_topic:
        return ""
    return f" (created it: compacted, {published.partitions} partition{'s' if published.partitions != 1 else ''})"


def run_set(
    env: Mapping[str, str], product_id: str, *, decision: str | None, reason: str | None, reference: str | None,
    expires: str | None, author: str | None, bootstrap: str | None = None, topic: str | None = None,
    timeout: float = 30.0, clock: Callable[[], float] = time.time,
) -> int:
    settings = _settings(env, bootstrap, topic)
    key, value, override = build_override(
        product_id, decision=decision, reason=reason, reference=reference,
        author=author if author is not None else default_author(), expires=expires, now=clock(),
    )
    published: Published = _run_kafka(
        settings, timeout, lambda: publish_record(settings, settings.overrides_topic, key, value, timeout)
    )
    _warn("set", published.warnings)
    until = f"until {override.expires_at}" if override.expires_at else "until cleared"
    reference_text = f", reference {_cell(override.reference)}" if override.reference else ""
    sys.stdout.write(
        f"published override for {_cell(product_id)}: {override.decision} {until}{reference_text}, by "
        f"{_cell(override.author)} at {override.created_at}, to {published.topic}{_created(published)} partition "
        f"{published.partition} offset {published.offset} at {settings.kafka_bootstrap_servers}\n"
    )
    return 0


def run_clear(
    env: Mapping[str, str], product_id: str, *, bootstrap: str | None = None, topic: str | None = None,
    timeout: float = 30.0, clock: Callable[[], float] = time.time,
) -> int:
    settings = _settings(env, bootstrap, topic)
    key = product_key(product_id)

    async def clear() -> tuple[Published, Entry | None]:
        published = await publish_record(settings, settings.overrides_topic, key, None, timeout)
        # What the tombstone replaced: the product's latest record before it, in the partition it went to.
        _, latest, _ = await read_latest(
            settings, settings.overrides_topic, timeout, stops={published.partition: published.offset}
        )
        return published, latest.get(key)

    published, previous = _run_kafka(settings, timeout, clear)
    _warn("clear", published.warnings)
    sys.stdout.write(
        f"cleared the override of {_cell(product_id)} ({describe_previous(previous, clock())}): tombstone published to "
        f"{published.topic}{_created(published)} partition {published.partition} offset {published.offset} at "
        f"{settings.kafka_bootstrap_servers}\n"
    )
    return 0


def run_list(
    env: Mapping[str, str], *, active: bool, as_json: bool, bootstrap: str | None = None, topic: str | None = None,
    timeout: float = 30.0, clock: Callable[[], float] = time.time,
) -> int:
    settings = _settings(env, bootstrap, topic)
    topic_name, where = settings.overrides_topic, settings.kafka_bootstrap_servers
    exists, latest, records = _run_kafka(settings, timeout, lambda: read_latest(settings, topic_name, timeout))
    now = clock()
    if not exists:
        sys.stderr.write(
            f"compliance-worker override list: topic {topic_name} does not exist at {where}: no override was ever set\n"
        )
        return 0
    entries = listed(latest, now, active=active)
    if as_json:
        for entry in entries:
            sys.stdout.write(orjson.dumps(entry.as_dict(now, topic_name)).decode() + "\n")
    else:
        if entries:
            sys.stdout.write("\n".join(render_table(entries, now)) + "\n")
        sys.stdout.write(summary_line(latest, now, topic=topic_name, where=where, records=records, active=active) + "\n")
    sys.stdout.flush()
    return 0
