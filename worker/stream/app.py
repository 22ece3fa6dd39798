"""Builds the Faust app from settings: topics, the agent, metrics, health endpoints, and runs the worker."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
from aiohttp.web import Response
from aiokafka.admin import AIOKafkaAdminClient
from faust.sensors.prometheus import FaustMetrics
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker import __version__
from worker.core import Policy, load_bundled_policy, load_policy_file
from worker.kafka import backoff, buffer, codecs, recovery, unreadable
from worker.kafka.consumer import Consumer, Transport
from worker.kafka.monitor import PrometheusMonitor
from worker.kafka.probe import BrokerProbe
from worker.kafka.schema import RawSchema
from worker.kafka.security import client_options, faust_credentials, scrub_logs
from worker.kafka.stores import MemoryStore, RocksDBStore, StateDirInUse, StateTable, lock_state_dir
from worker.kafka.supervisor import supervisor_telling
from worker.kafka.topics import PartitionsMismatch, ensure_compacted_topic, ensure_topics, partition_counts
from worker.kafka.whole_topic import WholeTopic
from worker.settings import Settings, SettingsError
from worker.stream import health, memory
from worker.stream.agent import register_agents
from worker.stream.lifecycle import PolicyLifecycle
from worker.stream.logs import logging_config
from worker.stream.lookup import ROUTED_HEADER, ProductLookup
from worker.stream.overrides import Change, OverrideBook, OverrideKeeper
from worker.stream.partition_watch import EXIT_CODE, PartitionWatch, refusal_message
from worker.stream.metrics import ComplianceMetrics, StateHeld, TopicPartitionOffsets
from worker.stream.policy_source import PolicySource, ensure_policy_topic, replay
from worker.stream.processing import DEAD_LETTER_MAX_BYTES, Processor
from worker.stream.runtime import Runtime
from worker.stream.state_store import TableStateStore

log = logging.getLogger("worker")

# Throughput knobs (docs/performance.md says what each trades).
BATCH_MAX = 2000
# Deep enough to cover the 1 s Faust sleeps when every partition is paused for buffer pressure.
STREAM_BUFFER_MAX = 20_000
# ...and in bytes (worker/kafka/buffer.py): 20,000 typical events are 8 MiB, under its pressure mark (80%: 12.8 MiB), so
# it binds only for large messages. A backlog of 400 messages of 1 MB peaked at 767 MiB RSS without it, 382 MiB
# with it, 138 MiB with worker/stream/memory.py too (a batch's inputs, their dead letters and the producer's copies).
STREAM_BUFFER_MAX_BYTES = 16 * 1024 * 1024
# Per partition, uncompressed: under the 1,000,000 bytes that topics often allow a batch (Kafka's default: 1 MiB + 12).
PRODUCER_BATCH_BYTES = 960 * 1024


STATE_TABLE = "decision-state"  # its changelog topic is APP_ID-decision-state-changelog


def state_path(settings: Settings) -> Path:
    """Where the state table's local store lives: STATE_DIR/APP_ID (RocksDB), a temporary directory (memory)."""
    if settings.state_store == "rocksdb":
        return settings.state_dir / settings.app_id
    return Path(tempfile.gettempdir()) / f"compliance-worker-{settings.app_id}"


def store_factory(settings: Settings) -> Any:
    cache_bytes = settings.state_cache_mb * 1024 * 1024

    def new_store(table: StateTable) -> Any:
        options = {"table_name": table.name, "loop": table.loop}
        if settings.state_store == "rocksdb":
            return RocksDBStore("rocksdb://", table.app, table, cache_bytes=cache_bytes, **options)
        return MemoryStore("memory://", table.app, table, **options)

    return new_store


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-{STATE_TABLE}-changelog"  # Faust's name for a table's changelog


def migration_topic(settings: Settings) -> str:
    """While it exists, `compliance-worker state migrate` has not finished moving the state (it records what it does)."""
    return f"{settings.app_id}-{STATE_TABLE}-migration"


def check_partitions(settings: Settings, partitions: dict[str, int], changelog: str) -> None:
    """Refuse to start when a product's state would not be where its events arrive (the input grew, say)."""
    topic = settings.state_topic
    inputs, states = partitions[topic], partitions.get(changelog)
    if states is not None and states != inputs:
        raise PartitionsMismatch(_refusal(settings, changelog)({topic: inputs, changelog: states}))


def _refusal(settings: Settings, changelog: str) -> Callable[[dict[str, int]], str]:
    return refusal_message(settings.state_topic, settings.input_topic, settings.app_id, changelog)


class _PartitionDescriber:
    """Partition counts from the broker, through one admin client kept open (made again after a failure)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.admin: AIOKafkaAdminClient | None = None

    async def __call__(self, topics: list[str]) -> dict[str, int]:
        if self.admin is None:
            settings = self.settings
            self.admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_options(settings))
            await self.admin.start()
        try:
            return await partition_counts(self.admin, topics, timeout=10.0)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        admin, self.admin = self.admin, None
        if admin is not None:
            await admin.close()


def load_policy(settings: Settings) -> Policy:
    return load_policy_file(settings.policy_file) if settings.policy_file else load_bundled_policy()


def _consumer_offsets(app: faust.App, topics: set[str]) -> TopicPartitionOffsets:
    consumer = app.consumer
    committed = consumer._committed_offset  # noqa: SLF001 - Faust keeps no public accessor
    return {
        (tp.topic, tp.partition): (consumer.highwater(tp), committed.get(tp))
        for tp in consumer.assignment()
        if tp.topic in topics
    }


def _standby_lag(app: faust.App, table: faust.Table) -> dict[int, int]:
    """Per standby partition of the state: its changelog end (last stable offset) less what the consumer has read."""
    changelog = table.changelog_topic_name
    standbys = {tp for tp in app.tables.recovery.standby_tps if tp.topic == changelog}
    consumer = cast(Consumer, app.consumer)
    positions = consumer._thread.positions(standbys.__contains__)  # noqa: SLF001 - Faust's consumer thread
    lag = {}
    for tp in standbys:
        end, position = consumer.highwater(tp), positions.get(tp)
        if end is not None and position is not None:
            lag[tp.partition] = max(0, end - position)
    return lag


def create_app(
    settings: Settings, policy: Policy, registry: CollectorRegistry | None = None, *,
    state_partitions: int | None = None, policy_offsets: dict[int, int] | None = None,
    dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES, overrides: OverrideBook | None = None,
    override_offsets: dict[int, int] | None = None, cleared_overrides: list[Change] | None = None,
) -> faust.App:
    """The Faust app with its topics, state table, agent, metrics and web views; nothing is started."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ComplianceMetrics.create(registry)
    agent_restarts = health.AgentRestarts(metrics.agent_restarts)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers],
        broker_credentials=faust_credentials(settings),
        processing_guarantee=settings.processing_guarantee,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        web_port=settings.worker_web_port,
        web_bind=settings.worker_web_host,
        # The URL the other workers of the group reach this one at (Faust's canonical_url, shared in the assignment).
        web_host=settings.worker_web_advertised_host or (
            settings.worker_web_host if settings.worker_web_host != "0.0.0.0" else socket.gethostname()
        ),
        web_in_thread=False,
        datadir=state_path(settings),
        tabledir=state_path(settings),
        table_standby_replicas=settings.table_standby_replicas,
        autodiscover=False,
        agent_supervisor=supervisor_telling(agent_restarts.restarted),
        producer_acks=-1,
        # Decisions, dead letters and the state changelog alike: one producer, and the outbox builds its batches from it.
        producer_compression_type=None if settings.kafka_compression_type == "none" else settings.kafka_compression_type,
        stream_buffer_maxsize=STREAM_BUFFER_MAX,
        broker_max_poll_records=BATCH_MAX,
        broker_commit_every=BATCH_MAX * 5,
        broker_commit_interval=1.0,
        producer_linger=0.005,
        # aiokafka keeps one produce request in flight per broker, with one batch per partition, and a full batch
        # makes the agent wait for the one before it: with Faust's 16 KiB default every ~35 records. At 128 KiB a
        # batch of 2,000 events still filled each partition's batch mid-way (its agent waited 2.3 s of a 5.3 s run);
        # at 960 KiB it fills only past ~1,300 events per partition: ~18,800 -> ~22,000 events/s (docs/performance.md).
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        consumer_auto_offset_reset="earliest",
        producer_max_request_size=dead_letter_max_bytes,  # a dead letter is larger than its input (base64)
    )
    app.transport = Transport(
        app.conf.broker_consumer, app, isolation_level=settings.kafka_isolation_level,
        watched_topics=tuple(dict.fromkeys((settings.input_topic, settings.state_topic, changelog_topic(settings)))),
        on_offsets_wait=metrics.offsets_waited,
    )
    stopped_at = app.transport.unreadable
    buffer.use_byte_bounded_buffers(app, STREAM_BUFFER_MAX_BYTES)
    monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, "faust"))
    app.monitor = monitor
    metrics.watch_consumer(lambda: _consumer_offsets(app, {settings.input_topic, settings.state_topic}))
    metrics.set_policy(policy.version, policy.digest, time.time())
    stopped_at.on_new = lambda found: metrics.unreadable_batches.labels(found.topic, str(found.partition)).inc()
    metrics.watch_unreadable(stopped_at.now)

    # Per-product decision state, co-partitioned with the input (same partition count), changelog-backed.
    table = app.tables.add(StateTable(
        app, name=STATE_TABLE, beacon=app.tables.beacon, store_factory=store_factory(settings),
        schema=RawSchema(key_serializer="raw", value_serializer="raw"),
        partitions=state_partitions or settings.topic_partitions,
    ))
    store = TableStateStore(table, table.data)
    table.data.on_restored = lambda role, records: metrics.state_restored.labels(role).inc(records)
    for role in ("active", "standby"):
        metrics.state_restored.labels(role)  # both series exist from the start, as alert rules expect
    metrics.watch_state(lambda: StateHeld(
        table.data.held(), getattr(table.data, "cache_bytes", lambda: None)(), _standby_lag(app, table),
    ))
    book = overrides if overrides is not None else OverrideBook()
    runtime = Runtime(settings, Processor(policy, store, dead_letter_max_bytes, book), metrics, store)
    metrics.overrides_active.set(book.active(time.time()))
    for decision in ("allow", "block"):
        metrics.override_decisions.labels(decision)  # both series exist from the start
    app.compliance = runtime  # type: ignore[attr-defined]

    topic_options: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    input_topic = app.topic(settings.input_topic, schema=RawSchema(), **topic_options)
    decisions_topic = app.topic(settings.decisions_topic, **topic_options)
    dead_letter_topic = app.topic(settings.dead_letter_topic, **topic_options)
    repartition_topic = (
        app.topic(settings.repartition_topic, schema=RawSchema(), **topic_options) if settings.repartition_topic else None
    )
    register_agents(app, runtime, input_topic, decisions_topic, dead_letter_topic, BATCH_MAX, repartition_topic)

    lifecycle = PolicyLifecycle(app, runtime, store, settings.decisions_topic, settings.state_topic, policy_offsets)
    app.task(lifecycle.follow_policies)
    app.task(lifecycle.rescreen_forever)
    keeper = OverrideKeeper(app, runtime, store, book, lifecycle.redecider, settings.state_topic, override_offsets)
    keeper.remember_cleared(cleared_overrides or [])
    app.task(keeper.follow)
    app.task(keeper.expire_forever)
    app.task(keeper.reconcile_forever)

    @app.on_partitions_revoked.connect
    async def forget_unstored_changes(sender: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        # Events of revoked partitions not yet acked are read again (here or elsewhere): so are their state changes.
        store.forget(tp.partition for tp in revoked if tp.topic == settings.state_topic)

    watch = None
    if state_partitions is not None:  # a real worker: prepare() found the counts equal at start
        changelog = changelog_topic(settings)
        watch = PartitionWatch(
            settings.state_topic, changelog, state_partitions, _refusal(settings, changelog),
            _PartitionDescriber(settings),
        )
        app.task(watch.watch_forever)
    app.partition_watch = watch  # type: ignore[attr-defined]

    @app.on_partitions_assigned.connect
    async def own_assigned_partitions(sender: faust.App, assigned: set[Any], **kwargs: Any) -> None:
        if watch is not None and not watch.check_assignment(assigned, sender.consumer.pause_partitions):
            return  # the input grew: nothing of this assignment is decided, the worker stops
        store.own(tp.partition for tp in assigned if tp.topic == settings.state_topic)
        stopped_at.forget(lambda topic, partition: TP(topic, partition) in assigned)  # another worker's now

    @app.on_rebalance_complete.connect
    async def rescreen_after_recovery(sender: faust.App, **kwargs: Any) -> None:
        # Recovered state may have been decided under an older policy, or before an override changed.
        lifecycle.request_rescreen()
        keeper.request_reconcile()

    probe = BrokerProbe(app)

    @app.page("/metrics")
    async def metrics_page(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        monitor.sync()
        return Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/healthz")
    async def healthz(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.json({
            "status": "ok",
            "version": __version__,
            "uptime_seconds": round(time.time() - runtime.started_at, 3),
            "policy_version": runtime.policy.version,
        })

    lookup = ProductLookup(app, runtime, store, settings.state_topic, table.changelog_topic_name)

    @app.page("/products/{product_id}")
    async def product(web: faust.web.View, request: faust.web.Request, product_id: str) -> faust.web.Response:
        status, body = await lookup.answer(product_id, ROUTED_HEADER in request.headers)
        return web.json(body, status=status)

    @app.page("/readyz")
    async def readyz(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        stopped = stopped_at.now()
        observed = health.Observed(
            broker_reachable=await probe.reachable(),
            recovered=app.tables.recovery.completed.is_set(),  # set by every recovery's end, never cleared
            seconds_since_agent_restart=agent_restarts.seconds_since_last(),
            assigned_partitions=sorted(
                tp.partition for tp in app.consumer.assignment() if tp.topic == settings.input_topic
            ),
            rebalancing=bool(app.rebalancing),
            recovering=bool(app.tables.recovery.in_recovery),
            unreadable=bool(stopped),
        )
        verdict = health.readiness(observed)
        body = {
            "ready": verdict.ready,
            "reasons": verdict.reasons,
            "notes": verdict.notes,
            "assigned_partitions": observed.assigned_partitions,
            "standby_partitions": sorted(
                tp.partition for tp in app.assignor.assigned_standbys() if tp.topic == table.changelog_topic_name
            ),
            "broker_reachable": observed.broker_reachable,
            "recovered": observed.recovered,
            "rebalancing": observed.rebalancing,
            "recovering": observed.recovering,
            "agent_restarts": agent_restarts.count,
            "policy_version": runtime.policy.version,
            "unreadable": [found._asdict() for found in stopped],
        }
        return web.json(body, status=200 if verdict.ready else 503)

    return app


@dataclass(frozen=True)
class Prepared:
    """What the worker learns before Faust starts."""

    policy: Policy
    policy_origin: str
    state_partitions: int  # of the topic the state follows (the input, or the repartition topic)
    policy_offsets: dict[int, int]  # where the policy topic was read to: following continues there
    notes: list[tuple[int, str, dict[str, Any]]]  # log records to emit after the start line
    dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES  # what the dead-letter topic accepts
    overrides: OverrideBook = field(default_factory=OverrideBook)  # as the overrides topic says at start
    override_offsets: dict[int, int] | None = None  # where following the overrides topic continues
    cleared_overrides: list[Change] = field(default_factory=list)  # tombstones read at start


async def prepare(settings: Settings, fallback: Policy) -> Prepared:
    """Create missing topics, and read the policy topic: the policy in force is what its documents make of the fallback."""
    notes: list[tuple[int, str, dict[str, Any]]] = []
    changelog = changelog_topic(settings)
    partitions, created, dead_letter_max_bytes = await ensure_topics(settings, DEAD_LETTER_MAX_BYTES, changelog=changelog)
    check_partitions(settings, partitions, changelog)
    if dead_letter_max_bytes < DEAD_LETTER_MAX_BYTES:
        notes.append((
            logging.WARNING,
            f"topic {settings.dead_letter_topic} has max.message.bytes={dead_letter_max_bytes}: dead letters larger "
            f"than that carry no payload (payload_omitted_bytes); set it to {DEAD_LETTER_MAX_BYTES} to keep every original",
            {"event": "dead_letter_topic_misconfigured"},
        ))
    if created:
        notes.append((logging.INFO, f"created topics {', '.join(created)}", {"event": "topics_created", "topics": created}))
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **client_options(settings))
    await admin.start()
    try:
        if migration_topic(settings) in await admin.list_topics():
            # The changelog may have its new partition count already, with some products' state not moved yet.
            raise PartitionsMismatch(
                f"a migration of the state of {settings.app_id} has not finished ({migration_topic(settings)} "
                f"exists): run compliance-worker state migrate --execute again before starting any worker "
                f"(docs/operations.md#growing-the-input)"
            )
        created_policy_topic, warnings = await ensure_policy_topic(
            admin, settings.policy_topic, settings.topic_replication_factor
        )
        if await ensure_compacted_topic(
            admin, settings.overrides_topic, settings.topic_partitions, settings.topic_replication_factor,
        ):
            notes.append((logging.INFO, f"created overrides topic {settings.overrides_topic}", {"event": "topics_created"}))
    finally:
        await admin.close()
    if created_policy_topic:
        notes.append((logging.INFO, f"created policy topic {settings.policy_topic}", {"event": "topics_created"}))
    notes.extend((logging.WARNING, warning, {"event": "policy_topic_misconfigured"}) for warning in warnings)
    source = PolicySource(settings.bootstrap_servers, settings.policy_topic, client_options(settings))
    try:
        records = await source.start()
    finally:
        await source.stop()
    policy, rejected = replay(records, fallback)
    for record, reason in rejected:
        where = f"{settings.policy_topic}[{record.partition}]@{record.offset}"
        detail = record.error if reason == "invalid" else "reuses the version in force with different content"
        notes.append((
            logging.WARNING, f"ignoring policy document {where} ({reason}): {detail}",
            {"event": "policy_ignored", "reason": reason, "source": where},
        ))
    if policy is not fallback:
        origin = f"topic {settings.policy_topic}"
    else:
        origin = str(settings.policy_file) if settings.policy_file else "the bundled policy"
    # The overrides, read to the end before any event is decided: an overridden product is never decided without.
    overrides = WholeTopic(settings.bootstrap_servers, settings.overrides_topic, client_options(settings))
    try:
        override_records = await overrides.start()
    finally:
        await overrides.stop()
    book = OverrideBook()
    cleared = []
    for record in override_records:
        change, rejected = book.apply(record)
        if rejected is not None:
            notes.append((
                logging.WARNING, f"ignoring override {settings.overrides_topic}[{record.partition}]@{record.offset} "
                f"for {change.key.decode(errors='replace')}: {rejected}", {"event": "override_rejected"},
            ))
        cleared.append(change)
    return Prepared(
        policy, origin, partitions[settings.state_topic], source.end_offsets, notes, dead_letter_max_bytes,
        book, overrides.end_offsets, [change for change in cleared if change.override is None],
    )


def hold_state_dir(settings: Settings) -> None:
    """Create and lock STATE_DIR/APP_ID for this process (RocksDB), or stop with one line saying why not."""
    if settings.state_store != "rocksdb":
        return
    path = state_path(settings)
    try:
        lock_state_dir(path)
    except StateDirInUse as exc:
        raise SettingsError(f"STATE_DIR={str(settings.state_dir)!r}: {exc}; give each worker its own STATE_DIR") from None
    except OSError as exc:
        raise SettingsError(
            f"STATE_DIR={str(settings.state_dir)!r}: cannot create or lock {path} ({exc.strerror or exc}); "
            "set STATE_DIR to a directory this user can write"
        ) from None


def ensure_port_free(host: str, port: int) -> None:
    """Fail with one clear line, not Faust's traceback, when the web port is taken."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SettingsError(
                f"WORKER_WEB_PORT={port}: cannot listen on {host}:{port} ({exc.strerror or exc})"
            ) from None


def run_worker(settings: Settings) -> int:
    """`compliance-worker worker`: configure logging, log the start line, run until stopped."""
    import logging.config

    ensure_port_free(settings.worker_web_host, settings.worker_web_port)
    backoff.install()  # before any client exists: an unreachable broker must not be retried in a busy loop
    unreadable.install()  # a batch the worker cannot read stops its partition, not the worker
    codecs.install()  # zstd output batches without a new compression context each
    recovery.install()  # a restore takes each queued changelog record without a task and a timer
    memory.keep_large_blocks_out_of_the_heap()  # large messages must not leave RSS high after they are gone
    policy = load_policy(settings)  # a bad policy file stops here, before anything connects
    client_options(settings)  # so do unusable certificate or key files
    hold_state_dir(settings)  # and a state directory that cannot be written or is another worker's
    scrub_logs(settings)  # before any logging: secrets never reach a log line, whichever library writes it
    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    aiokafka_log = logging.getLogger("aiokafka")
    # Its connection chatter must not come before the start line; an unreachable broker is reported by us.
    level, aiokafka_log.level = aiokafka_log.level, logging.CRITICAL
    try:
        prepared = asyncio.run(prepare(settings, policy))
    finally:
        aiokafka_log.setLevel(level)
    policy = prepared.policy
    app = create_app(
        settings, policy, state_partitions=prepared.state_partitions, policy_offsets=prepared.policy_offsets,
        dead_letter_max_bytes=prepared.dead_letter_max_bytes, overrides=prepared.overrides,
        override_offsets=prepared.override_offsets, cleared_overrides=prepared.cleared_overrides,
    )
    log.info(
        "compliance-worker %s starting: broker %s, input %s, decisions %s, dead letters %s, "
        "policy %s (from %s), guarantee %s, web http://%s:%d (/metrics /healthz /readyz)",
        __version__, settings.kafka_bootstrap_servers, settings.input_topic, settings.decisions_topic,
        settings.dead_letter_topic, policy.version, prepared.policy_origin, settings.processing_guarantee,
        settings.worker_web_host, settings.worker_web_port,
        extra={"event": "starting", "settings": settings.describe(), "policy_version": policy.version},
    )
    for note_level, message, extra in prepared.notes:
        log.log(note_level, message, extra=extra)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level, settings.log_format),
        quiet=True,
        redirect_stdouts=False,
        override_logging=True,
        console_port=0,
    )
    app.compliance.metrics.gc_pauses.install()  # type: ignore[attr-defined]
    # Everything built so far (modules, Faust, the policy index) lives as long as the process. Frozen, the
    # collector's full passes skip it: each such pass stood the worker still for tens of milliseconds, the
    # latency spikes of the benchmark (docs/performance.md, Latency).
    gc.freeze()
    try:
        worker.execute_from_commandline()  # exits the process with Faust's exit code
    except SystemExit:
        watch = app.partition_watch  # type: ignore[attr-defined]
        if watch is not None and watch.refusal is not None:  # the same line and exit code as the refusal at start
            sys.stderr.write(f"compliance-worker worker: {watch.refusal}\n")
            raise SystemExit(EXIT_CODE) from None
        raise
    return 0
