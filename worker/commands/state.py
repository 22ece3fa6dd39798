"""`compliance-worker state migrate`: after the input grew, each product's state moved to where its events now arrive."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaError

from worker.commands.errors import describe_error
from worker.core.clock import format_timestamp
from worker.core.errors import ComplianceError
from worker.core.partitioning import PARTITIONERS, Detection, Plan, detect, partition_for, plan
from worker.kafka.security import KafkaSecurityError, client_options, security_problem
from worker.settings import Settings
from worker.stream.app import changelog_topic, migration_topic

AUTO = "auto"
PARTITIONER_CHOICES = (AUTO, *PARTITIONERS)
MARKER_KEY = b"migration"
MAX_IN_FLIGHT = 5000  # sends awaiting the broker's acknowledgement
PROGRESS_EVERY_SECONDS = 0.5
# Why a migration could not finish (the summary's "stopped").
INTERRUPTED = "interrupted"
FAILED = "failed"


class MigrateRefused(ComplianceError):
    """The migration must not run now, or cannot know what to do: exit 2, with one line saying why."""


class MigrateBrokerError(ComplianceError):
    """The broker or a topic could not be reached or read: exit 1 (may work on a retry)."""

    retriable = True


@dataclass(frozen=True)
class Marker:
    """What an unfinished migration does: a rerun continues it (same partition counts, same partitioner)."""

    topic: str  # the topic the state follows: INPUT_TOPIC, or the repartition topic (KEY_MISMATCH=repartition)
    from_partitions: int
    to_partitions: int
    partitioner: str
    started_at: str

    def encode(self) -> bytes:
        return orjson.dumps({
            "topic": self.topic, "from_partitions": self.from_partitions,
            "to_partitions": self.to_partitions, "partitioner": self.partitioner, "started_at": self.started_at,
        })

    @classmethod
    def decode(cls, data: bytes | None) -> Marker | None:
        try:
            body = orjson.loads(data or b"")
            marker = cls(
                str(body["topic"]), int(body["from_partitions"]), int(body["to_partitions"]),
                str(body["partitioner"]), str(body["started_at"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        return marker if marker.partitioner in PARTITIONERS else None


@dataclass(frozen=True)
class Layout:
    """What the cluster says before any state is read."""

    topic: str  # the topic the state follows (Settings.state_topic)
    changelog: str
    partitions: int
    changelog_partitions: int | None  # None: no changelog yet (no product has state)
    marker: Marker | None
    marker_exists: bool  # the marker topic, even when it holds no readable marker
    members: int  # of the consumer group APP_ID


@dataclass(frozen=True)
class Scope:
    """What this run migrates: from ``old`` to ``new`` partitions, by ``partitioner`` (None: detect it)."""

    old: int
    new: int
    partitioner: str | None
    resuming: bool


def scope(layout: Layout, requested: str, app_id: str) -> Scope | str:
    """What to migrate, or (a str) why there is nothing to do; raises MigrateRefused when it must not run."""
    if layout.members:
        raise MigrateRefused(
            f"the consumer group {app_id} has {layout.members} active member{'s' if layout.members != 1 else ''}: "
            f"stop every worker of {app_id} first (they would keep writing the state being moved), then run again"
        )
    marker = layout.marker
    if layout.marker_exists and marker is None:
        raise MigrateRefused(
            f"{layout.changelog.removesuffix('-changelog')}-migration exists but holds no readable migration record: "
            f"it is not this command's; look at it, delete it if it is stale, and run again"
        )
    if marker is not None:
        if marker.topic != layout.topic or marker.to_partitions != layout.partitions:
            raise MigrateRefused(
                f"an unfinished migration of {app_id}'s state to {marker.to_partitions} partitions of "
                f"{marker.topic} was started at {marker.started_at}, but {layout.topic} has {layout.partitions}: run "
                f"it with the settings it was started with"
            )
        if requested not in (AUTO, marker.partitioner):
            raise MigrateRefused(
                f"the unfinished migration started at {marker.started_at} moves keys by {marker.partitioner}, not "
                f"{requested}: run it again with --partitioner {marker.partitioner} (or auto)"
            )
        if layout.changelog_partitions not in (marker.from_partitions, marker.to_partitions):
            raise MigrateRefused(
                f"the unfinished migration started at {marker.started_at} grows {layout.changelog} from "
                f"{marker.from_partitions} to {marker.to_partitions} partitions, but it has "
                f"{layout.changelog_partitions}: it was changed meanwhile; look at it before going on"
            )
        return Scope(marker.from_partitions, marker.to_partitions, marker.partitioner, resuming=True)
    states, inputs = layout.changelog_partitions, layout.partitions
    if states is None:
        return f"{layout.changelog} does not exist: no product has state yet, nothing to migrate"
    if states == inputs:
        return f"{layout.changelog} has as many partitions as {layout.topic} ({inputs}): nothing to migrate"
    if states > inputs:
        raise MigrateRefused(
            f"{layout.topic} has {inputs} partitions, fewer than the {states} of {layout.changelog}: a topic "
            f"cannot shrink, so state cannot follow; was {layout.topic} deleted and created again?"
        )
    return Scope(states, inputs, None if requested == AUTO else requested, resuming=False)


# --- the summary ---------------------------------------------------------------------------------------------------


@dataclass
class Undecided:
    """Events on the old partitions of the input after the group's committed offsets: not decided yet."""

    events: int = 0
    moving_events: int = 0  # of products whose state moves: decided on their old partition without it
    moving_products: int = 0


@dataclass
class Summary:
    """What a migration (or its dry run) read, found and did."""

    changelog: str
    topic: str  # the topic the state follows
    dry_run: bool
    old: int = 0
    new: int = 0
    resuming: bool = False
    started_at: float = field(default_factory=time.time)
    nothing: str | None = None  # why there was nothing to migrate
    records: int = 0  # changelog records read
    detection: Detection | None = None
    partitioner: str | None = None
    how: str = ""  # how the partitioner was chosen
    plan: Plan | None = None
    undecided: Undecided = field(default_factory=Undecided)
    grown: bool = False
    copied: int = 0
    tombstoned: int = 0
    stopped_by: str | None = None
    stopped: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        p = self.plan
        return {
            "dry_run": self.dry_run,
            "changelog": self.changelog,
            "topic": self.topic,
            "started_at": format_timestamp(self.started_at),
            "nothing_to_do": self.nothing,
            "from_partitions": self.old or None,
            "to_partitions": self.new or None,
            "resumed": self.resuming,
            "records_read": self.records,
            "partitioner": self.partitioner,
            "partitioner_chosen_by": self.how or None,
            "explained": self.detection.explained if self.detection else None,
            "products": p.keys if p else 0,
            "moved": len(p.moves) if p else 0,
            "stayed": p.stayed if p else 0,
            "stale_copies": p.tombstones - sum(len(s.stale) for s in p.moves) if p else 0,
            "tombstones": p.tombstones if p else 0,
            "moved_from": _by_partition(p.moved_from) if p else {},
            "moved_to": _by_partition(p.moved_to) if p else {},
            "products_per_partition": _by_partition(p.products_on) if p else {},
            "undecided_events": self.undecided.events,
            "undecided_events_of_moved_products": self.undecided.moving_events,
            "undecided_moved_products": self.undecided.moving_products,
            "changelog_grown": self.grown,
            "copied": self.copied,
            "tombstoned": self.tombstoned,
            "stopped_by": self.stopped_by,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }

    def render(self) -> str:
        if self.nothing is not None:
            return f"nothing to do: {self.nothing}"
        p = self.plan
        assert p is not None
        moves, stale = len(p.moves), sum(len(s.stale) for s in p.cleanups)
        where = f"{self.changelog} from {self.old} to {self.new} partitions (the partitions of {self.topic})"
        if self.dry_run:
            head = f"dry run: would migrate {where}; nothing was written (--execute does it)"
        elif self.stopped is None:
            head = f"migrated {where} in {self.seconds:.2f}s"
        else:
            head = f"migration of {where} stopped after {self.seconds:.2f}s: run the same command again to finish it"
        lines = [head]
        if self.resuming:
            lines.append("  resumed:      a migration that had not finished (its copies already written count as moved)")
        lines += [
            f"  read:         {self.records:,} changelog records, {p.keys:,} products with state",
            f"  partitioner:  {self.partitioner} ({self.how})",
            f"  {('would move:' if self.dry_run else 'moved:'):<14}{moves:,} product{'s' if moves != 1 else ''}"
            + (f" (from {_partitions(p.moved_from)}; to {_partitions(p.moved_to)})" if moves else ""),
            f"  {('would stay:' if self.dry_run else 'stayed:'):<14}{p.stayed:,}",
        ]
        if p.cleanups:
            lines.append(f"  copied:       {len(p.cleanups):,} already (by the run that stopped); {stale:,} "
                         f"cop{'ies' if stale != 1 else 'y'} left behind to remove")
        lines.append(f"  afterwards:   {_partitions(p.products_on) or 'no products'}")
        if not self.dry_run:
            lines.append(
                f"  written:      {'changelog grown to ' + str(self.new) + ' partitions, ' if self.grown else ''}"
                f"{self.copied:,} copies, {self.tombstoned:,} tombstones"
            )
        u = self.undecided
        if u.moving_events:
            lines.append(
                f"  warning:      {u.moving_events:,} undecided event{'s' if u.moving_events != 1 else ''} of "
                f"{u.moving_products:,} moved product{'s' if u.moving_products != 1 else ''} wait on their old "
                f"partition: decided there after the migration, without the state that moved "
                f"(docs/operations.md#growing-the-input)"
            )
        elif u.events:
            lines.append(f"  undecided:    {u.events:,} events on the old partitions, none of a product that moves")
        if self.stopped is not None:
            lines.append(f"  stopped:      {self.stopped}")
        return "\n".join(lines)


def _by_partition(counts: Mapping[int, int]) -> dict[str, int]:
    return {str(p): n for p, n in sorted(counts.items())}


def _partitions(counts: Mapping[int, int]) -> str:
    return ", ".join(f"partition {p} {n:,}" for p, n in sorted(counts.items()))


def choose_partitioner(summary: Summary, detection: Detection, requested: str | None, resuming: bool) -> str:
    """The partitioner to move keys by, after checking it against where the keys are; refuses when none fits."""
    summary.detection = detection
    keys = detection.keys
    if requested is None:
        if detection.chosen is None:
            raise MigrateRefused(f"cannot tell which partitioner placed the keys: {detection.reason}; "
                                 f"name it with --partitioner {'|'.join(PARTITIONERS)}")
        others = ", ".join(f"{n} {c:,}" for n, c in detection.explained.items() if n != detection.chosen)
        summary.how = f"auto: it puts all {keys:,} keys where they are; {others}" if keys else \
            "auto: no keys to tell partitioners apart, any will do"
        return detection.chosen
    explained = detection.explained[requested]
    if explained != keys:
        raise MigrateRefused(
            f"{requested} puts only {explained:,} of the {keys:,} keys where they are on {summary.old} partitions"
            + (f" or {summary.new}" if resuming else "")
            + f": it is not the upstream's partitioner ({', '.join(f'{n} {c:,}' for n, c in detection.explained.items())})"
        )
    summary.how = ("recorded by the unfinished migration" if resuming else "--partitioner") + \
        f"; it puts all {keys:,} keys where they are"
    return requested


# --- Kafka -------------------------------------------------------------------------------------------------------


class Progress:
    """One line on a terminal (stderr), rewritten at most twice a second, cleared at the end."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.next_at = 0.0
        self.shown = False

    def show(self, text: Callable[[], str], *, force: bool = False) -> None:
        if self.out is None:
            return
        now = time.monotonic()
        if now < self.next_at and not force:
            return
        self.next_at = now + PROGRESS_EVERY_SECONDS
        self.out.write(f"\r\033[K{text()}")
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        if self.out is not None and self.shown:
            self.out.write("\r\033[K")
            self.out.flush()
            self.shown = False



class Kafka:
    """The admin client, consumers and producer one migration uses, all with the worker's connection settings."""

    def __init__(self, settings: Settings, timeout: float) -> None:
        self.settings, self.timeout = settings, timeout
        self.options = {
            "bootstrap_servers": settings.bootstrap_servers, "request_timeout_ms": int(timeout * 1000),
            **client_options(settings),
        }
        self.admin: Any = None
        self.producer: Any = None

    async def _call(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(call, self.timeout)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            raise MigrateBrokerError(f"{what}: {describe_error(exc)}") from None

    async def start(self) -> None:
        self.admin = AIOKafkaAdminClient(**self.options)
        await self._call(f"cannot reach Kafka at {self.settings.kafka_bootstrap_servers}", self.admin.start())

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        if self.admin is not None:
            await self.admin.close()

    async def layout(self, changelog: str, marker_name: str) -> Layout:
        settings = self.settings
        # Every topic first: asking for one by name may have a broker create it (auto.create.topics.enable).
        known = set(await self._call("cannot list topics", self.admin.list_topics()))
        topic = settings.state_topic
        if topic not in known:
            what = "the input topic" if topic == settings.input_topic else "the repartition topic (KEY_MISMATCH=repartition)"
            raise MigrateBrokerError(f"{what} {topic} does not exist at {settings.kafka_bootstrap_servers}")
        names = [name for name in (topic, changelog) if name in known]
        described = await self._call("cannot describe topics", self.admin.describe_topics(names))
        counts = {t["topic"]: len(t["partitions"]) for t in described}
        marker = await self._read_marker(marker_name) if marker_name in known else None
        # One group per request: aiokafka 0.14 misreads the second group of a DescribeGroups answer.
        responses = await self._call(
            f"cannot describe consumer group {settings.app_id}", self.admin.describe_consumer_groups([settings.app_id]),
        )
        members = sum(len(group[5]) for response in responses for group in response.groups if group[1] == settings.app_id)
        return Layout(topic, changelog, counts[topic], counts.get(changelog), marker,
                      marker_name in known, members)

    def consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, isolation_level="read_committed", auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 << 20, fetch_max_bytes=64 << 20, **self.options,
        )

    async def _read_marker(self, topic: str) -> Marker | None:
        last = None
        async for messages in self.scan({topic: {0: None}}):
            last = messages[-1]
        return Marker.decode(last.value) if last is not None else None

    async def scan(
        self, ranges: Mapping[str, Mapping[int, tuple[int, int] | None]], ends: dict[TopicPartition, int] | None = None,
    ) -> AsyncIterator[list[Any]]:
        """The records of each partition's [start, stop) (None: from its beginning to its end offset now), a batch
        at a time, read_committed; ``ends`` is given each partition's end offset (its last stable offset) first."""
        consumer = self.consumer()
        await self._call(f"cannot reach Kafka at {self.settings.kafka_bootstrap_servers}", consumer.start())
        try:
            tps = [TopicPartition(topic, p) for topic, partitions in ranges.items() for p in partitions]
            consumer.assign(tps)
            beginnings = await self._call("cannot read offsets", consumer.beginning_offsets(tps))
            last_stable = await self._call("cannot read offsets", consumer.end_offsets(tps))
            if ends is not None:
                ends.update(last_stable)
            stops: dict[TopicPartition, int] = {}
            for tp in tps:
                span = ranges[tp.topic][tp.partition]
                start, stop = (beginnings[tp], last_stable[tp]) if span is None else span
                start, stop = max(start, beginnings[tp]), min(stop, last_stable[tp])
                if start < stop:
                    consumer.seek(tp, start)
                    stops[tp] = stop
            consumer.pause(*[tp for tp in tps if tp not in stops])
            while stops:
                batches = await self._call("reading failed", consumer.getmany(*stops, timeout_ms=1000, max_records=5000))
                for tp, messages in batches.items():
                    stop = stops.get(tp, -1)
                    wanted = [message for message in messages if message.offset < stop]
                    if wanted:
                        yield wanted
                for tp in list(stops):
                    # the position passes aborted records and transaction markers too, so this ends on every partition
                    if await consumer.position(tp) >= stops[tp]:
                        del stops[tp]
                        consumer.pause(tp)
        finally:
            await consumer.stop()

    async def open_transactions(self, tps: list[TopicPartition]) -> list[int]:
        """Partitions whose last stable offset is behind their end: a transaction is open there."""
        uncommitted = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, isolation_level="read_uncommitted",
                                       **self.options)
        committed = self.consumer()
        try:
            await self._call("cannot reach Kafka", uncommitted.start())
            await self._call("cannot reach Kafka", committed.start())
            high = await self._call("cannot read offsets", uncommitted.end_offsets(tps))
            stable = await self._call("cannot read offsets", committed.end_offsets(tps))
        finally:
            await uncommitted.stop()
            await committed.stop()
        return sorted(tp.partition for tp in tps if stable[tp] < high[tp])

    async def committed(self, tps: list[TopicPartition]) -> dict[int, int]:
        """The consumer group's committed offsets of these input partitions (absent: none committed)."""
        offsets = await self._call(
            f"cannot read the committed offsets of group {self.settings.app_id}",
            self.admin.list_consumer_group_offsets(self.settings.app_id, partitions=tps),
        )
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta is not None and meta.offset >= 0}

    async def write_marker(self, topic: str, marker: Marker, *, exists: bool) -> None:
        if not exists:
            await self._call(f"cannot create {topic}", self.admin.create_topics([NewTopic(
                topic, 1, self.settings.topic_replication_factor, topic_configs={"cleanup.policy": "compact"},
            )]))
        producer = await self.start_producer()
        await self.await_partitions(topic, 1)
        await self._call(f"cannot write to {topic}", producer.send_and_wait(topic, marker.encode(), key=MARKER_KEY))

    async def delete_marker(self, topic: str) -> None:
        await self._call(f"cannot delete {topic}", self.admin.delete_topics([topic]))

    async def grow(self, topic: str, partitions: int) -> None:
        await self._call(f"cannot add partitions to {topic}",
                         self.admin.create_partitions({topic: NewPartitions(partitions)}))

    async def start_producer(self) -> Any:
        if self.producer is None:
            codec = self.settings.kafka_compression_type
            self.producer = AIOKafkaProducer(
                acks="all", enable_idempotence=True, linger_ms=5, compression_type=None if codec == "none" else codec,
                **self.options,
            )
            await self._call(f"cannot reach Kafka at {self.settings.kafka_bootstrap_servers}", self.producer.start())
        return self.producer

    async def await_partitions(self, topic: str, partitions: int) -> None:
        """Until the producer's metadata has ``partitions`` for ``topic`` (it refuses a partition it does not know)."""
        producer = await self.start_producer()
        deadline = time.monotonic() + self.timeout
        while len(producer.client.cluster.partitions_for_topic(topic) or ()) < partitions:
            if time.monotonic() > deadline:
                raise MigrateBrokerError(f"{topic} does not show {partitions} partitions after {self.timeout:.0f}s")
            await self._call("cannot read metadata", producer.client.force_metadata_update())
            await asyncio.sleep(0.1)


class Sender:
    """Sends with a bounded number awaiting acknowledgement; the first refusal ends the migration."""

    def __init__(self, producer: Any, on_acked: Callable[[], None]) -> None:
        self.producer, self.on_acked = producer, on_acked
        self.in_flight: deque[asyncio.Future[Any]] = deque()

    async def send(self, topic: str, partition: int, key: bytes, value: bytes | None, timestamp_ms: int | None) -> None:
        self.in_flight.append(await self.producer.send(topic, value, key=key, partition=partition,
                                                       timestamp_ms=timestamp_ms))
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            await self.settle(MAX_IN_FLIGHT // 2)

    async def settle(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` sends await acknowledgement (0: all acknowledged)."""
        while len(self.in_flight) > keep:
            future = self.in_flight[0]
            try:
                await asyncio.shield(future)
            except Exception as exc:  # noqa: BLE001 - whatever the broker said ends the migration
                raise MigrateBrokerError(f"the broker did not acknowledge a record: {describe_error(exc)}") from exc
            self.in_flight.popleft()
            self.on_acked()


async def migrate(
    settings: Settings, *, requested: str, execute: bool, timeout: float, progress: Progress,
) -> Summary:
    changelog = changelog_topic(settings)
    marker_name = migration_topic(settings)
    summary = Summary(changelog, settings.state_topic, dry_run=not execute)
    started = time.monotonic()
    kafka = Kafka(settings, timeout)
    try:
        await kafka.start()
        layout = await kafka.layout(changelog, marker_name)
        chosen = scope(layout, requested, settings.app_id)
        if isinstance(chosen, str):
            summary.nothing = chosen
            return summary
        summary.old, summary.new, summary.resuming = chosen.old, chosen.new, chosen.resuming
        current = layout.changelog_partitions or 0
        tps = [TopicPartition(changelog, p) for p in range(current)]
        open_transactions = await kafka.open_transactions(tps)
        if open_transactions:
            raise MigrateBrokerError(
                f"{changelog} has a transaction still open on partition{'s' if len(open_transactions) > 1 else ''} "
                f"{', '.join(map(str, open_transactions))} (a worker stopped in the middle of one, under exactly_once): "
                f"run again once the broker has aborted it (the worker's transaction timeout)"
            )

        live: dict[int, dict[bytes, tuple[int, int]]] = {p: {} for p in range(current)}
        ends: dict[TopicPartition, int] = {}
        async for messages in kafka.scan({changelog: {p: None for p in range(current)}}, ends):
            records = live[messages[0].partition]
            for message in messages:
                if message.value is None:
                    records.pop(message.key, None)
                else:
                    records[message.key] = (message.offset, message.timestamp)
            summary.records += len(messages)
            progress.show(lambda: f"reading {changelog}: {summary.records:,} records")
        progress.clear()
        candidates = (chosen.partitioner,) if chosen.partitioner else tuple(PARTITIONERS)
        detection = detect(live, chosen.old, chosen.new, candidates, resuming=chosen.resuming)
        partitioner = summary.partitioner = choose_partitioner(summary, detection, chosen.partitioner, chosen.resuming)
        summary.plan = moves = plan(live, partitioner, chosen.old, chosen.new)
        del live
        await count_undecided(kafka, settings, chosen, partitioner, summary.undecided, progress)
        if not execute:
            return summary

        if layout.marker is None:
            await kafka.write_marker(marker_name, Marker(
                settings.state_topic, chosen.old, chosen.new, partitioner, format_timestamp(time.time()),
            ), exists=layout.marker_exists)
        if current < chosen.new:
            await kafka.grow(changelog, chosen.new)
            summary.grown = True
        await kafka.await_partitions(changelog, chosen.new)
        try:
            await write(kafka, changelog, moves, ends, summary, progress)
        except asyncio.CancelledError:
            summary.stopped_by, summary.stopped = INTERRUPTED, "interrupted (Ctrl-C)"
            return summary
        except MigrateBrokerError as exc:
            summary.stopped_by, summary.stopped = FAILED, exc.message
            return summary
        finally:
            progress.clear()
        await kafka.delete_marker(marker_name)
        return summary
    finally:
        summary.seconds = time.monotonic() - started
        await kafka.close()


async def write(
    kafka: Kafka, changelog: str, moves: Plan, ends: Mapping[TopicPartition, int], summary: Summary, progress: Progress,
) -> None:
    """Each moved product's newest copy onto its new partition, then, once every copy is acknowledged, a tombstone
    for each copy left behind: stopped anywhere, every product has a copy, and a rerun finishes the job."""
    producer = await kafka.start_producer()

    def copied() -> None:
        summary.copied += 1

    def tombstoned() -> None:
        summary.tombstoned += 1

    # Copies are read again rather than kept from the first read: only keys and offsets had to fit in memory.
    targets: dict[int, dict[int, int]] = {}  # partition -> offset of a newest copy -> its new partition
    for step in moves.moves:
        assert step.source is not None
        targets.setdefault(step.source.partition, {})[step.source.offset] = step.target
    total = len(moves.moves)
    sender = Sender(producer, copied)
    ranges = {changelog: {
        p: (min(offsets), ends[TopicPartition(changelog, p)]) for p, offsets in targets.items()
    }}
    async for messages in kafka.scan(ranges):
        wanted = targets[messages[0].partition]
        for message in messages:
            target = wanted.get(message.offset)
            if target is not None:
                await sender.send(changelog, target, message.key, message.value, message.timestamp)
        progress.show(lambda: f"copies: {summary.copied:,}/{total:,} acknowledged")
    await sender.settle()
    if summary.copied != total:
        raise MigrateBrokerError(f"only {summary.copied:,} of {total:,} copies were found again: the changelog "
                                 f"changed while it was read (compacted?); run again")
    sender = Sender(producer, tombstoned)
    stale = [(step.key, partition) for step in (*moves.moves, *moves.cleanups) for partition in step.stale]
    for key, partition in stale:
        await sender.send(changelog, partition, key, None, None)
        progress.show(lambda: f"tombstones: {summary.tombstoned:,}/{len(stale):,} acknowledged")
    await sender.settle()


async def count_undecided(
    kafka: Kafka, settings: Settings, chosen: Scope, partitioner: str, into: Undecided, progress: Progress,
) -> None:
    """Events on the old partitions of the topic the state follows after the group's committed offsets, and those of
    products that move."""
    tps = [TopicPartition(settings.state_topic, p) for p in range(chosen.old)]
    committed = await kafka.committed(tps)
    moving: set[bytes] = set()
    # A partition the group never committed on was never decided: all of it waits.
    ranges: dict[int, tuple[int, int] | None] = {
        tp.partition: (committed[tp.partition], 1 << 62) if tp.partition in committed else None for tp in tps
    }
    ends: dict[TopicPartition, int] = {}
    async for messages in kafka.scan({settings.state_topic: ranges}, ends):
        for message in messages:
            into.events += 1
            key = message.key
            if key and partition_for(partitioner, key, chosen.new) != message.partition:
                into.moving_events += 1
                moving.add(key)
        progress.show(lambda: f"reading undecided events of {settings.state_topic}: {into.events:,}")
    progress.clear()
    into.moving_products = len(moving)


def run_migrate(
    env: Mapping[str, str], *, partitioner: str, execute: bool, timeout: float, as_json: bool,
    bootstrap: str | None = None,
) -> int:
    """The command: 0 when done (or nothing to do, or a dry run), 1 when Kafka failed, 130 when interrupted;
    refusals raise MigrateRefused (exit 2, one line)."""
    overrides = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap} if bootstrap else {}
    settings = Settings.from_env({**env, **overrides})
    # aiokafka logs each failed connection attempt; the one line of the error says what went wrong instead.
    aiokafka_log = logging.getLogger("aiokafka")
    level, aiokafka_log.level = aiokafka_log.level, logging.CRITICAL
    progress = Progress(sys.stderr if sys.stderr.isatty() else None)
    try:
        summary = asyncio.run(migrate(settings, requested=partitioner, execute=execute, timeout=timeout,
                                      progress=progress))
    except KeyboardInterrupt:
        progress.clear()
        sys.stderr.write("compliance-worker state migrate: interrupted; run the same command again to finish\n")
        return 130
    except MigrateBrokerError:
        progress.clear()
        problem = asyncio.run(security_problem(settings, min(timeout, 10.0)))
        if problem is not None:
            raise KafkaSecurityError(f"cannot connect to Kafka: {problem}") from None
        raise
    finally:
        aiokafka_log.setLevel(level)
    sys.stdout.write((orjson.dumps(summary.as_dict()).decode() if as_json else summary.render()) + "\n")
    sys.stdout.flush()
    return {INTERRUPTED: 130, FAILED: 1}.get(summary.stopped_by or "", 0)
