"""Every labelled counter of the contract exports a series per known label value from the start, at 0."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from worker.core.errors import ErrorCode
from worker.stream.metrics import ComplianceMetrics


def series(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in registry.collect() for sample in family.samples if sample.name == name
    }


def test_counters_have_every_series_at_zero_before_anything_happened() -> None:
    registry = CollectorRegistry()
    ComplianceMetrics.create(registry)
    assert series(registry, "compliance_dead_letters_total") == {(("code", code.value),): 0.0 for code in ErrorCode}
    assert series(registry, "compliance_policy_rejected_total") == {
        (("reason", "invalid"),): 0.0, (("reason", "version_reused"),): 0.0,
    }
    assert series(registry, "compliance_rescreened_products_total") == {
        (("result", "changed"),): 0.0, (("result", "unchanged"),): 0.0,
    }
