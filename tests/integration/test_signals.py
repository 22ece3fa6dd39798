"""Review signals on a real broker with a real worker process: a flag, then a hold kept across a later upsert.

The worker starts with POLICY_FILE enabling review signals (`on_signal: flag`); a policy with
`on_signal: hold` is then published on the test's policy topic and put in force live. The metric
is read from the worker's /metrics (a missing series fails, it never reads as 0).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import produce
from tests.integration.prometheus import sample, wait_for_sample
from tests.integration.test_state_and_policy import decisions_for, policy_in_force, policy_text, publish_policy, wait_for
from worker.core.policy import parse_policy_bytes

DRESS = "Apparel & Accessories > Clothing > Dresses"
TITLE = "Gaun batik wanita lengan pendek"
SIGNALS = "compliance_review_signals_total"
ORIGIN, CATEGORY = "ORIGIN_CHANGED_AFTER_BLOCK", "CATEGORY_CHANGED_AFTER_BLOCK"


def review_policy(tmp_path: Path, on_signal: str) -> Path:
    """The bundled policy under a new version, with both review signals and ``on_signal``."""
    version = f"2026.12.0+{on_signal}{uuid.uuid4().hex[:6]}"
    path = tmp_path / f"policy-{on_signal}.yaml"
    path.write_text(
        policy_text(version) + "\nreview:\n  enabled: true\n"
        "  signals: [origin_changed_after_block, category_changed_after_block]\n"
        f"  on_signal: {on_signal}\n",
        encoding="utf-8",
    )
    return path


def upsert(product_id: str, version: int, country: str) -> tuple[bytes, bytes]:
    """Seller S-7 with the same title every time; seller and ship-from both ``country``."""
    body = {
        "event_id": f"{product_id}@{version}-{uuid.uuid4().hex[:8]}",
        "product": {
            "id": product_id, "version": version, "title": TITLE, "seller": {"id": "S-7", "country": country},
            "ship_from_country": country, "category": {"path": DRESS},
        },
    }
    return product_id.encode(), orjson.dumps(body)


def decide_one(worker: WorkerProcess, message: tuple[bytes, bytes]) -> dict[str, Any]:
    produce(worker.bootstrap, worker.input_topic, [message])
    [body] = decisions_for(worker, [message])  # schema-checked, exactly once
    return body


def shape(body: dict[str, Any]) -> tuple[Any, ...]:
    return body["decision"], body["reasons"], body["review"], body["previous_decision"], body["changed"]


def test_a_blocked_product_back_domestic_is_flagged_then_held(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path,
) -> None:
    worker = start_worker(POLICY_FILE=str(review_policy(tmp_path, "flag")))
    metrics = worker.metrics()
    assert (sample(metrics, SIGNALS, signal=ORIGIN), sample(metrics, SIGNALS, signal=CATEGORY)) == (0, 0), "pre-created"

    # flag: blocked from China, back from Indonesia with the same seller and title -> allowed, for review
    blocked = decide_one(worker, upsert("P-flag", 1, "CN"))
    assert shape(blocked) == (
        "block", ["CROSS_BORDER_RESTRICTED_CLUSTER", "FOREIGN_SELLER", "FOREIGN_SHIP_FROM", "MATCHED_CATEGORY_PATH"],
        False, None, True,
    ), worker.tail_log()
    flagged = decide_one(worker, upsert("P-flag", 2, "ID"))
    assert shape(flagged) == ("allow", ["DOMESTIC_ITEM", "MATCHED_CATEGORY_PATH", ORIGIN], True, "block", True), worker.tail_log()
    assert wait_for_sample(worker.metrics, SIGNALS, 1, signal=ORIGIN) == 1

    # hold, published live: blocked, back domestic -> still blocked, and so on the next upsert
    hold_path = review_policy(tmp_path, "hold")
    publish_policy(worker.bootstrap, hold_path, policy_topic)
    hold = parse_policy_bytes(hold_path.read_bytes())
    wait_for(lambda: policy_in_force(worker, hold), f"policy {hold.version} in force", worker.tail_log)
    assert decide_one(worker, upsert("P-hold", 1, "CN"))["decision"] == "block"
    held = decide_one(worker, upsert("P-hold", 2, "ID"))
    assert shape(held) == (
        "block", ["HELD_FOR_REVIEW", "DOMESTIC_ITEM", "MATCHED_CATEGORY_PATH", ORIGIN], True, "block", False,
    ), worker.tail_log()
    still_held = decide_one(worker, upsert("P-hold", 3, "ID"))
    assert shape(still_held) == shape(held), worker.tail_log()
    assert [body["policy_version"] for body in (held, still_held)] == [hold.version] * 2

    # Counted once per event that raised it: the flag and the hold, not the held product's later upsert. The
    # decisions counter of that last batch is updated in the same call, so once it reads 4 the signals are final.
    assert wait_for_sample(worker.metrics, "compliance_decisions_total", 4, decision="block", cluster="textile_fashion") == 4
    metrics = worker.metrics()
    assert (sample(metrics, SIGNALS, signal=ORIGIN), sample(metrics, SIGNALS, signal=CATEGORY)) == (2, 0)
