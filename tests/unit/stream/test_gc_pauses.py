"""The garbage-collector pause histogram: one observation per pass, by generation, only while installed."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from worker.stream.metrics import ComplianceMetrics


def passes(registry: CollectorRegistry, generation: int) -> float:
    value = registry.get_sample_value("compliance_gc_pause_seconds_count", {"generation": str(generation)})
    assert value is not None
    return value


def test_each_full_pass_is_observed_while_installed_and_none_after() -> None:
    registry = CollectorRegistry()
    metrics = ComplianceMetrics.create(registry)
    assert passes(registry, 2) == 0
    metrics.gc_pauses.install()
    try:
        metrics.gc_pauses.install()  # twice is once
        gc.collect()
        gc.collect()
        assert passes(registry, 2) == 2
        assert registry.get_sample_value("compliance_gc_pause_seconds_sum", {"generation": "2"}) > 0
    finally:
        metrics.gc_pauses.uninstall()
    gc.collect()
    assert passes(registry, 2) == 2
