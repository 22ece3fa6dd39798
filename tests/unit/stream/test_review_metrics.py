"""compliance_review_signals_total: every series from the start, and a batch's raised signals counted once each."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import orjson
from prometheus_client import CollectorRegistry

from tests.unit.conftest import make_event
from tests.unit.core.test_policy_rules import policy_with
from worker.core.classify import SIGNAL_CODES
from worker.stream.agent import record_metrics
from worker.stream.metrics import ComplianceMetrics
from worker.stream.processing import MemoryStateStore, Processor
from worker.stream.runtime import Runtime

NOW = 1_796_083_200.0


def signals(registry: CollectorRegistry, code: str) -> float:
    value = registry.get_sample_value("compliance_review_signals_total", {"signal": code})
    assert value is not None, f"no compliance_review_signals_total{{signal={code!r}}}"
    return value


def test_every_signal_series_exists_at_zero_from_the_start() -> None:
    registry = CollectorRegistry()
    ComplianceMetrics.create(registry)
    assert [signals(registry, code) for code in SIGNAL_CODES] == [0.0, 0.0]
    assert SIGNAL_CODES == ("ORIGIN_CHANGED_AFTER_BLOCK", "CATEGORY_CHANGED_AFTER_BLOCK")


def test_a_batch_counts_the_signals_its_events_raised_not_a_holds_repeats() -> None:
    registry = CollectorRegistry()
    runtime = cast(Runtime, SimpleNamespace(metrics=ComplianceMetrics.create(registry)))
    policy = policy_with(review={
        "enabled": True, "signals": ["origin_changed_after_block", "category_changed_after_block"], "on_signal": "hold",
    }, version="t-hold")
    processor = Processor(policy, MemoryStateStore())
    steps = [  # (product, version, country, path): blocked, held by both signals, held again (not counted)
        ("P-1", 1, "CN", "Apparel & Accessories > Clothing > Dresses"),
        ("P-1", 2, "ID", "Electronics > Communications > Telephony > Mobile Phones"),
        ("P-1", 3, "ID", "Electronics > Communications > Telephony > Mobile Phones"),
        ("P-2", 1, "CN", "Apparel & Accessories > Clothing > Dresses"),
        ("P-2", 2, "ID", "Apparel & Accessories > Clothing > Dresses"),
    ]
    outcomes, events = [], []
    for offset, (product, version, country, path) in enumerate(steps):
        value = orjson.dumps(make_event(
            event_id=f"{product}-{version}", product__id=product, product__version=version, product__hs_code=...,
            product__seller={"id": "S-1", "country": country}, product__ship_from_country=country,
            product__category={"path": path},
        ))
        outcomes.append(processor.process(product.encode(), value, "in", 0, offset, NOW))
        events.append(cast(Any, SimpleNamespace(message=SimpleNamespace(topic="in", partition=0, offset=offset, time_in=None))))
    assert [outcome.signals for outcome in outcomes] == [
        (), ("ORIGIN_CHANGED_AFTER_BLOCK", "CATEGORY_CHANGED_AFTER_BLOCK"), (), (), ("ORIGIN_CHANGED_AFTER_BLOCK",),
    ]
    record_metrics(runtime, events, outcomes, NOW)
    assert (signals(registry, "ORIGIN_CHANGED_AFTER_BLOCK"), signals(registry, "CATEGORY_CHANGED_AFTER_BLOCK")) == (2.0, 1.0)
    # Held decisions are block decisions, counted by the cluster their facts place them in.
    assert registry.get_sample_value("compliance_decisions_total", {"decision": "block", "cluster": "textile_fashion"}) == 3.0
    assert registry.get_sample_value("compliance_decisions_total", {"decision": "block", "cluster": "none"}) == 2.0
