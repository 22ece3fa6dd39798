"""The worker's domain metrics, grouped in one object created against an injected registry."""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from prometheus_client.registry import Collector

from worker.core.classify import SIGNAL_CODES
from worker.core.errors import ErrorCode

# Event consumed -> decision acknowledged by the broker: milliseconds when healthy, seconds when not.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# One garbage-collector pass: tens of microseconds for the youngest generation, up to hundreds of milliseconds for
# a full pass over a large heap, which is what shows up in the latency tail.
GC_PAUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
POLICY_REJECTION_REASONS = ("invalid", "version_reused")  # compliance_policy_rejected_total{reason}
RESCREEN_RESULTS = ("changed", "unchanged")  # compliance_rescreened_products_total{result}
# (topic, partition) -> (high watermark, committed offset); either is None until first known.
TopicPartitionOffsets = Mapping[tuple[str, int], tuple[int | None, int | None]]


class ConsumerLagCollector(Collector):
    """Per-partition lag computed at scrape time from the consumer's own bookkeeping (no timers)."""

    def __init__(self, read_offsets: Callable[[], TopicPartitionOffsets]) -> None:
        self._read_offsets = read_offsets

    def collect(self) -> Iterable[GaugeMetricFamily]:
        lag = GaugeMetricFamily(
            "compliance_consumer_lag",
            "Messages in the partition not yet committed by this worker (end offset - committed offset)",
            labels=["topic", "partition"],
        )
        end = GaugeMetricFamily(
            "compliance_consumer_end_offset", "End of each assigned input partition: its last stable offset when read read_committed (the default), else its high watermark",
            labels=["topic", "partition"],
        )
        try:
            offsets = self._read_offsets()
        except Exception:  # noqa: BLE001 - a scrape must never fail because the consumer is mid-rebalance
            offsets = {}
        for (topic, partition), (highwater, committed) in sorted(offsets.items()):
            if highwater is None:
                continue  # nothing fetched from this partition yet: lag unknown, not zero
            labels = [topic, str(partition)]
            end.add_metric(labels, highwater)
            lag.add_metric(labels, max(0, highwater - (committed or 0)))
        yield lag
        yield end

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class StateHeld(NamedTuple):
    """What the state's collector reads at scrape time."""

    partitions: list[tuple[int, str, int]]  # (partition, "active" or "standby", products) of each partition held
    cache_bytes: int | None  # the RocksDB block cache's usage (None: the memory store)
    standby_lag: dict[int, int]  # per standby partition: changelog records its copy has not received yet


class StateCollector(Collector):
    """The state partitions this worker holds and what they cost, read from the store at scrape time."""

    def __init__(self, read_state: Callable[[], StateHeld]) -> None:
        self._read_state = read_state

    def collect(self) -> Iterable[GaugeMetricFamily]:
        products = GaugeMetricFamily(
            "compliance_state_products",
            "Products whose state this worker holds, per state partition and role (RocksDB: its estimate)",
            labels=["partition", "role"],
        )
        cache = GaugeMetricFamily(
            "compliance_state_cache_bytes",
            "Bytes in the RocksDB block cache all state partitions share (memtables, index and filter blocks included)",
        )
        lag = GaugeMetricFamily(
            "compliance_state_standby_lag_records",
            "Changelog records of a standby partition its copy here has not received yet (what a takeover would "
            "still have to read)",
            labels=["partition"],
        )
        try:
            state = self._read_state()
        except Exception:  # noqa: BLE001 - a scrape must never fail because a partition is being closed
            state = StateHeld([], None, {})
        for partition, role, count in state.partitions:
            products.add_metric([str(partition), role], count)
        for partition, records in sorted(state.standby_lag.items()):
            lag.add_metric([str(partition)], records)
        yield products
        yield lag
        if state.cache_bytes is not None:
            cache.add_metric([], state.cache_bytes)
            yield cache

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class UnreadableCollector(Collector):
    """Where partitions stopped at a batch the worker cannot read: present only while one is stopped."""

    def __init__(self, read_stopped: Callable[[], Iterable[Any]]) -> None:
        self._read_stopped = read_stopped

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "compliance_unreadable_batch_offset",
            "The offset a partition stopped at because its batch cannot be read (present only while stopped)",
            labels=["topic", "partition"],
        )
        for found in self._read_stopped():
            family.add_metric([found.topic, str(found.partition)], found.offset)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []


class BatchHistogram(Collector):
    """A Prometheus histogram fed a batch at a time: one bisect per value, no lock, no per-value call chain.

    Observations and scrapes both run on the worker's event loop, so plain
    integers suffice; the exposition is the standard _bucket/_sum/_count.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.upper_bounds = tuple(buckets)
        self._counts = [0] * (len(self.upper_bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds = self._counts, self.upper_bounds
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self._sum += total

    @property
    def count(self) -> int:
        return sum(self._counts)

    def collect(self) -> Iterable[HistogramMetricFamily]:
        cumulative, running = [], 0
        for bound, count in zip((*map(floatToGoString, self.upper_bounds), "+Inf"), self._counts):
            running += count
            cumulative.append((bound, running))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, self._sum)
        yield family

    def describe(self) -> Iterable[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation)]


class GcPauses:
    """How long the process stood still for each garbage-collector pass, by generation.

    ``gc.callbacks`` calls back at the start and the end of every pass; each end
    is one observation. Installed only by the running worker (``install``), not
    by every app a test builds.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = Histogram(
            "compliance_gc_pause_seconds", "Time the worker stood still in one garbage-collector pass, by generation",
            ["generation"], buckets=GC_PAUSE_BUCKETS, registry=registry,
        )
        self._by_generation = [self.histogram.labels(str(generation)) for generation in range(3)]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._by_generation[info["generation"]].observe(time.perf_counter() - self._started)

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


@dataclass(frozen=True)
class ComplianceMetrics:
    """Counters, histograms and gauges named per the contract (compliance_*)."""

    registry: CollectorRegistry
    decisions: Counter
    dead_letters: Counter
    tombstones: Counter
    review_signals: Counter
    latency: BatchHistogram
    policy_info: Gauge
    policy_loaded: Gauge
    batch_size: Histogram
    policy_rejected: Counter
    rescreened: Counter
    rescreen_pending: Gauge
    rescreen_duration: Gauge
    state_restored: Counter
    unreadable_batches: Counter
    repartitioned: Counter
    overrides_active: Gauge
    overrides_rejected: Counter
    override_decisions: Counter
    agent_restarts: Counter
    offsets_waits: Counter
    offsets_wait_seconds: Counter
    gc_pauses: GcPauses

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ComplianceMetrics:
        # process_* (CPU, memory, file descriptors) and python_info: the dashboard's process panels need them,
        # and an own registry does not get them by default.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        review_signals = Counter(
            "compliance_review_signals", "Review signals raised by events, by reason code (a held product's later "
            "decisions repeat its signal and are not counted)", ["signal"], registry=registry,
        )
        for code in SIGNAL_CODES:
            review_signals.labels(code)  # every series from the start: alert rules and dashboards see 0, not nothing
        return cls(
            registry=registry,
            decisions=Counter(
                "compliance_decisions", "Decisions published, by outcome and cluster",
                ["decision", "cluster"], registry=registry,
            ),
            dead_letters=Counter(
                "compliance_dead_letters", "Input messages sent to the dead-letter topic, by error code",
                ["code"], registry=registry,
            ),
            tombstones=Counter(
                "compliance_tombstones", "Tombstones (product removed) forwarded to the decisions topic",
                registry=registry,
            ),
            review_signals=review_signals,
            latency=BatchHistogram(
                "compliance_decision_latency_seconds",
                "Event consumed by the worker -> decision acknowledged by the broker",
                LATENCY_BUCKETS, registry,
            ),
            policy_info=Gauge(
                "compliance_policy_info", "The policy in force (value 1), by version and content digest",
                ["version", "digest"], registry=registry,
            ),
            policy_loaded=Gauge(
                "compliance_policy_loaded_timestamp_seconds", "When the policy in force was loaded",
                registry=registry,
            ),
            batch_size=Histogram(
                "compliance_batch_size", "Input messages handled per batch",
                buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000), registry=registry,
            ),
            policy_rejected=Counter(
                "compliance_policy_rejected", "Policy documents from the policy topic not put in force, by reason",
                ["reason"], registry=registry,
            ),
            rescreened=Counter(
                "compliance_rescreened_products", "Known products decided again after a policy change, by result",
                ["result"], registry=registry,
            ),
            rescreen_pending=Gauge(
                "compliance_rescreen_pending_products", "Products still to re-screen under the policy in force",
                registry=registry,
            ),
            rescreen_duration=Gauge(
                "compliance_rescreen_last_duration_seconds", "How long the last re-screening pass took",
                registry=registry,
            ),
            state_restored=Counter(
                "compliance_state_restored_records",
                "State changelog records applied to the local store by a recovery, by role (active: before the "
                "partition's events are decided; standby: keeping a copy up to date)",
                ["role"], registry=registry,
            ),
            unreadable_batches=Counter(
                "compliance_unreadable_batches",
                "Fetched batches the worker could not read (corrupt, or a codec it lacks), each counted once: its "
                "partition stopped there",
                ["topic", "partition"], registry=registry,
            ),
            repartitioned=Counter(
                "compliance_repartitioned_events",
                "Input events sent on to the repartition topic keyed by their product id (KEY_MISMATCH=repartition)",
                registry=registry,
            ),
            overrides_active=Gauge(
                "compliance_overrides_active", "Overrides in force (not expired) on the overrides topic, as this worker read it",
                registry=registry,
            ),
            overrides_rejected=Counter(
                "compliance_overrides_rejected",
                "Override documents on the overrides topic that were not valid (the product then has no override)",
                registry=registry,
            ),
            override_decisions=Counter(
                "compliance_override_decisions",
                "Decisions an override in force made (first reason MANUAL_OVERRIDE), by decision",
                ["decision"], registry=registry,
            ),
            agent_restarts=Counter(
                "compliance_agent_restarts",
                "Restarts of the decide agent after it crashed (a failed delivery, a bug): each makes /readyz 503 "
                "for a while (agent_restarting)",
                registry=registry,
            ),
            offsets_waits=Counter(
                "compliance_committed_offsets_waits",
                "Seeks that had to wait for the group's committed offsets (an open transaction's, a coordinator "
                "moving), by how the wait ended: answered, fell_back (at_least_once, at the bound: the offsets "
                "before the open transaction's), timed_out (the seek and the rebalance fail)",
                ["outcome"], registry=registry,
            ),
            offsets_wait_seconds=Counter(
                "compliance_committed_offsets_wait_seconds",
                "Seconds seeks spent waiting for the group's committed offsets",
                registry=registry,
            ),
            gc_pauses=GcPauses(registry),
        ).with_every_series()

    def with_every_series(self) -> ComplianceMetrics:
        """Each labelled counter's series of every known label value, at 0 from the start: an absent series
        breaks alert rules (increase() cannot see a series that appears with its first increment) and dashboards."""
        for code in ErrorCode:
            self.dead_letters.labels(code.value)
        for reason in POLICY_REJECTION_REASONS:
            self.policy_rejected.labels(reason)
        for result in RESCREEN_RESULTS:
            self.rescreened.labels(result)
        return self

    def set_policy(self, version: str, digest: str, loaded_at: float) -> None:
        self.policy_info.clear()
        self.policy_info.labels(version=version, digest=digest[:12]).set(1)
        self.policy_loaded.set(loaded_at)

    def offsets_waited(self, outcome: str, seconds: float) -> None:
        self.offsets_waits.labels(outcome).inc()
        self.offsets_wait_seconds.inc(seconds)

    def watch_consumer(self, read_offsets: Callable[[], TopicPartitionOffsets]) -> None:
        self.registry.register(ConsumerLagCollector(read_offsets))

    def watch_state(self, read_state: Callable[[], StateHeld]) -> None:
        self.registry.register(StateCollector(read_state))

    def watch_unreadable(self, read_stopped: Callable[[], Iterable[Any]]) -> None:
        self.registry.register(UnreadableCollector(read_stopped))
