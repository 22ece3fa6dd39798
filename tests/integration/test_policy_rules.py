"""The optional policy rules through a running worker on a real broker: minimum price (exchange rates, HS
exemptions, PRICE_REQUIRED and NO_EXCHANGE_RATE dead letters), exempt sellers, effective dates (also crossed while
the worker runs), and re-screening known products that a new policy cannot decide."""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import Record, produce
from tests.integration.prometheus import sample, series
from tests.integration.test_state_and_policy import (
    DECISION_SCHEMA, decisions_for, log_events, policy_in_force, publish_policy, read_to_end, read_until,
    rescreen_bodies, rescreen_finished, rescreened, wait_for,
)
from worker.core import Policy, classify, decode_event
from worker.core.policy import BUNDLED_POLICY, parse_policy_bytes
from worker.core.state import ProductState

DRESS = "Apparel & Accessories > Clothing > Dresses"
SNACKS = "Food, Beverages & Tobacco > Food Items > Snack Foods"
BASKET = "Home & Garden > Decor > Baskets"  # crafts
PHONE = "Electronics > Communications > Telephony > Mobile Phones"  # in no cluster
BOOK = "Media > Books > Print Books"  # in no cluster
MINIMUM_PRICE: dict[str, Any] = {
    "enabled": True, "amount": "100.00", "currency": "USD", "applies_to": "cross_border",
    "exempt_hs_prefixes": ["4901"], "exchange_rates": {"IDR": "0.0000625"},
}


@cache
def bundled() -> dict[str, Any]:
    return yaml.safe_load(resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes())


def write_rules_policy(
    tmp_path: Path, *, effective: dict[str, str] | None = None, exempt: list[str] | None = None,
    minimum: dict[str, Any] | None = None,
) -> tuple[Path, Policy]:
    """The bundled policy under a new version with the optional rules given, as a JSON file."""
    document = copy.deepcopy(bundled())
    document["version"] = f"2026.12.0+rules{uuid.uuid4().hex[:8]}"
    for cluster, starts in (effective or {}).items():
        document["clusters"][cluster]["effective_from"] = starts
    if exempt is not None:
        document["exempt_sellers"] = exempt
    if minimum is not None:
        document["minimum_price"] = minimum
    path = tmp_path / f"{document['version']}.json"
    path.write_bytes(orjson.dumps(document))
    return path, parse_policy_bytes(path.read_bytes())


def upsert(
    product_id: str, path: str, country: str, *, seller_id: str | None = None, price: tuple[str, str] | None = None,
    hs_code: str | None = None, version: int = 1,
) -> tuple[bytes, bytes]:
    """A product-upsert message: seller and ship-from both `country` (ID: domestic, else cross-border)."""
    seller: dict[str, Any] = {"country": country} | ({"id": seller_id} if seller_id else {})
    product: dict[str, Any] = {
        "id": product_id, "version": version, "seller": seller, "ship_from_country": country, "category": {"path": path},
    }
    if price is not None:
        product["price"] = {"amount": price[0], "currency": price[1]}
    if hs_code is not None:
        product["hs_code"] = hs_code
    body = {"event_id": f"{product_id}@{version}-{uuid.uuid4().hex[:8]}", "product": product}
    return product_id.encode(), orjson.dumps(body)


def produce_in_order(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    assert produce(bootstrap, topic, messages) == len(messages)


def dead_letters_of(worker: WorkerProcess, count: int) -> dict[str, dict[str, Any]]:
    """The dead letters on the worker's topic by product key, once `count` have arrived."""
    records = read_until(
        worker.bootstrap, worker.dead_letter_topic, lambda records: len(records) >= count,
        what=f"{count} dead letters", log=worker.tail_log,
    )
    return {record.record.key.decode(): record.body for record in records if record.record.key is not None}


def epoch(decided_at: str) -> float:
    return datetime.strptime(decided_at, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


# --- the rules, each through the worker ------------------------------------------------------------------------


def test_optional_rules_decide_as_the_core_does_with_every_reason_code(
    start_worker: Callable[..., WorkerProcess], tmp_path: Path,
) -> None:
    path, policy = write_rules_policy(
        tmp_path, effective={"crafts": "2099-01-01T00:00:00+07:00", "food_beverage": "2020-01-01"},
        exempt=["S-EXEMPT"], minimum=MINIMUM_PRICE,
    )
    worker = start_worker(POLICY_FILE=str(path))
    # (message, outcome, evidence it must carry): every optional reason code at least once.
    cases = [
        (upsert("XB-DRESS", DRESS, "CN", price=("5.00", "USD")), "CROSS_BORDER_RESTRICTED_CLUSTER", ()),
        (upsert("XB-DRESS-EXEMPT", DRESS, "CN", seller_id="S-EXEMPT"), "SELLER_EXEMPT", ("FOREIGN_SELLER",)),
        # food_beverage restricted since 2020: in force as ever
        (upsert("XB-SNACK", SNACKS, "MY", price=("500.00", "USD")), "CROSS_BORDER_RESTRICTED_CLUSTER", ()),
        # crafts restricted only from 2099: judged by price like any unrestricted item, the cluster still named
        (upsert("XB-BASKET-CHEAP", BASKET, "CN", price=("5.00", "USD")), "CROSS_BORDER_BELOW_MINIMUM_PRICE",
         ("CLUSTER_NOT_YET_EFFECTIVE",)),
        (upsert("XB-BASKET-DEAR", BASKET, "CN", price=("150.00", "USD")), "NOT_RESTRICTED_CATEGORY",
         ("CLUSTER_NOT_YET_EFFECTIVE", "PRICE_AT_OR_ABOVE_MINIMUM")),
        (upsert("XB-BASKET-EXEMPT", BASKET, "CN", seller_id="S-EXEMPT"), "SELLER_EXEMPT", ()),
        # rupiah at 0.0000625: 1,599,999 IDR is 99.9999375 USD, below 100.00 although it rounds to it
        (upsert("XB-PHONE-IDR-BELOW", PHONE, "CN", price=("1599999", "IDR")), "CROSS_BORDER_BELOW_MINIMUM_PRICE", ()),
        (upsert("XB-PHONE-IDR-AT", PHONE, "CN", price=("1600000", "IDR")), "NOT_RESTRICTED_CATEGORY",
         ("PRICE_AT_OR_ABOVE_MINIMUM",)),
        (upsert("XB-BOOK", BOOK, "US", price=("5.00", "USD"), hs_code="4901.99"), "NOT_RESTRICTED_CATEGORY",
         ("HS_EXEMPT_FROM_MINIMUM_PRICE",)),
        (upsert("XB-BOOK-NOT-EXEMPT", BOOK, "US", price=("5.00", "USD"), hs_code="4902.10"),
         "CROSS_BORDER_BELOW_MINIMUM_PRICE", ()),
        # domestic items are never judged by price, priced or not
        (upsert("ID-PHONE-NO-PRICE", PHONE, "ID"), "NOT_RESTRICTED_CATEGORY", ()),
    ]
    undecidable = {  # key -> dead-letter code
        "XB-PHONE-NO-PRICE": "PRICE_REQUIRED", "XB-PHONE-EUR": "NO_EXCHANGE_RATE",
    }
    bad = [upsert("XB-PHONE-NO-PRICE", PHONE, "CN"), upsert("XB-PHONE-EUR", PHONE, "CN", price=("500.00", "EUR"))]
    messages = [message for message, _, _ in cases]
    produce_in_order(worker.bootstrap, worker.input_topic, messages + bad)

    bodies = decisions_for(worker, messages)
    for (message, outcome, evidence), body in zip(cases, bodies):
        expected = classify(decode_event(message[1]), policy, epoch(body["decided_at"]))
        where = f"{message[0].decode()}: {body['reasons']}"
        assert body["policy_version"] == policy.version, where
        assert body["reasons"] == list(expected.reasons), where  # the core's verdict, every reason code in order
        assert (body["decision"], body["cluster"]) == (expected.decision, expected.cluster), where
        assert body["reasons"][0] == outcome and set(evidence) <= set(body["reasons"]), where
    assert {body["product_id"]: body["cluster"] for body in bodies}["XB-BASKET-CHEAP"] == "crafts"
    seen = {reason for body in bodies for reason in body["reasons"]}
    optional = {
        "SELLER_EXEMPT", "CROSS_BORDER_BELOW_MINIMUM_PRICE", "CLUSTER_NOT_YET_EFFECTIVE", "PRICE_AT_OR_ABOVE_MINIMUM",
        "HS_EXEMPT_FROM_MINIMUM_PRICE",
    }
    assert optional <= seen, f"not seen: {optional - seen}"

    dead = dead_letters_of(worker, len(bad))
    assert {key: body["error"]["code"] for key, body in dead.items()} == undecidable
    assert "EUR" in dead["XB-PHONE-EUR"]["error"]["message"], dead["XB-PHONE-EUR"]
    text = worker.metrics()
    assert sample(text, "compliance_dead_letters_total", code="PRICE_REQUIRED") == 1
    assert sample(text, "compliance_dead_letters_total", code="NO_EXCHANGE_RATE") == 1
    blocked_by_price = sum(1 for body in bodies if body["reasons"][0] == "CROSS_BORDER_BELOW_MINIMUM_PRICE")
    decisions = series(text, "compliance_decisions_total")
    assert sum(decisions.values()) == len(cases)
    assert sample(text, "compliance_decisions_total", decision="block", cluster="none") == blocked_by_price - 1
    assert sample(text, "compliance_decisions_total", decision="block", cluster="crafts") == 1  # the cheap basket


def test_a_cluster_becomes_restricted_at_its_effective_from_while_the_worker_runs(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path,
) -> None:
    """The decision time is each event's, not the policy's load time: one worker, one policy, both sides of the date."""
    worker = start_worker()
    boundary = time.time() + 8.0
    starts = datetime.fromtimestamp(boundary, timezone.utc).isoformat(timespec="milliseconds")
    path, policy = write_rules_policy(tmp_path, effective={"crafts": starts})
    publish_policy(worker.bootstrap, path, policy_topic)
    wait_for(lambda: policy_in_force(worker, policy), f"policy {policy.version} in force", worker.tail_log)

    before = upsert("XB-BASKET-1", BASKET, "CN")
    produce_in_order(worker.bootstrap, worker.input_topic, [before])
    [early] = decisions_for(worker, [before])
    assert epoch(early["decided_at"]) < boundary, f"decided only at {early['decided_at']}, after {starts}: too slow"
    assert (early["decision"], early["cluster"], early["reasons"][0]) == ("allow", "crafts", "NOT_RESTRICTED_CATEGORY")
    assert "CLUSTER_NOT_YET_EFFECTIVE" in early["reasons"]

    wait_for(lambda: time.time() >= boundary, f"the clock to pass {starts}", timeout=30)
    after = upsert("XB-BASKET-2", BASKET, "CN")
    produce_in_order(worker.bootstrap, worker.input_topic, [after])
    [late] = decisions_for(worker, [after])
    assert epoch(late["decided_at"]) >= boundary
    assert (late["decision"], late["cluster"], late["reasons"][0]) == ("block", "crafts", "CROSS_BORDER_RESTRICTED_CLUSTER")
    assert "CLUSTER_NOT_YET_EFFECTIVE" not in late["reasons"]
    for body in (early, late):
        assert body["policy_version"] == policy.version
        DECISION_SCHEMA.validate(body)


# --- re-screening what a new policy cannot decide ----------------------------------------------------------------


def changelog(worker: WorkerProcess) -> dict[bytes, ProductState | None]:
    """The newest state record of each product on the worker's state changelog topic, decoded as the worker does."""
    newest: dict[bytes, ProductState | None] = {}
    for decoded in read_to_end(worker.bootstrap, f"{worker.app_id}-decision-state-changelog", json=False):
        record: Record = decoded.record
        assert record.key is not None
        newest[record.key] = None if record.value is None else ProductState.decode(record.key, record.value)
    return newest


def test_rescreen_keeps_the_decision_of_products_the_new_policy_cannot_decide(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path,
) -> None:
    first = start_worker("worker-1")
    known = {
        "XB-PHONE-NO-PRICE": upsert("XB-PHONE-NO-PRICE", PHONE, "CN"),  # new policy: PRICE_REQUIRED
        "XB-PHONE-EUR": upsert("XB-PHONE-EUR", PHONE, "CN", price=("50.00", "EUR")),  # new policy: NO_EXCHANGE_RATE
        "XB-PHONE-CHEAP": upsert("XB-PHONE-CHEAP", PHONE, "CN", price=("5.00", "USD")),  # allow -> block
        "ID-PHONE": upsert("ID-PHONE", PHONE, "ID"),  # domestic: allowed under both
        "XB-DRESS": upsert("XB-DRESS", DRESS, "CN"),  # blocked under both
    }
    produce_in_order(first.bootstrap, first.input_topic, list(known.values()))
    seeded = {body["product_id"]: body for body in decisions_for(first, list(known.values()))}
    assert {key: body["decision"] for key, body in seeded.items()} == {
        "XB-PHONE-NO-PRICE": "allow", "XB-PHONE-EUR": "allow", "XB-PHONE-CHEAP": "allow", "ID-PHONE": "allow",
        "XB-DRESS": "block",
    }

    path, new = write_rules_policy(tmp_path, minimum=MINIMUM_PRICE)
    publish_policy(first.bootstrap, path, policy_topic)
    finished = wait_for(lambda: rescreen_finished(first, new), f"re-screening under {new.version}", first.tail_log)
    assert (finished["changed"], finished["unchanged"]) == (1, 4), finished
    assert rescreened(first) == (1, 4), "the undecidable products count as unchanged: they keep their decision"
    kept = {
        entry["message"].split()[1]: entry["code"] for entry in log_events(first)
        if entry.get("event") == "rescreen_undecidable"
    }
    assert kept == {"XB-PHONE-NO-PRICE": "PRICE_REQUIRED", "XB-PHONE-EUR": "NO_EXCHANGE_RATE"}, first.tail_log()

    # Only the flip is published; no decision and no dead letter for the products kept as they were.
    rescreens = rescreen_bodies(read_to_end(first.bootstrap, first.decisions_topic))
    assert [(b["product_id"], b["decision"], b["previous_decision"]) for b in rescreens] == [
        ("XB-PHONE-CHEAP", "block", "allow")
    ]
    assert rescreens[0]["reasons"][:2] == ["POLICY_CHANGE", "CROSS_BORDER_BELOW_MINIMUM_PRICE"]
    assert read_to_end(first.bootstrap, first.dead_letter_topic) == []
    # Their state records the new policy version (so they are not re-screened again), with the decision kept.
    state = changelog(first)
    for key in ("XB-PHONE-NO-PRICE", "XB-PHONE-EUR", "ID-PHONE", "XB-DRESS"):  # undecidable, or decided the same
        stored = state[key.encode()]
        assert stored is not None and (stored.policy_version, stored.decision) == (new.version, seeded[key]["decision"]), stored
        assert stored.decision_id == seeded[key]["decision_id"], "the decision in force is the one published"
    assert first.stop() == 0, first.tail_log()

    # A restarted worker recovers that state: nothing is due for re-screening under the policy in force.
    second = start_worker("worker-2")
    assert policy_in_force(second, new)
    probe = [upsert("XB-DRESS", DRESS, "CN", version=2)]  # decided once the recovery is done
    produce_in_order(second.bootstrap, second.input_topic, probe)
    decisions_for(second, probe)
    assert rescreened(second) == (0, 0)
    events = {entry.get("event") for entry in log_events(second)}
    assert not events & {"rescreen_started", "rescreen_undecidable"}, second.tail_log()

    # The kept decision is the one in force: the next event of the product is decided against it.
    later = [
        upsert("XB-PHONE-NO-PRICE", PHONE, "CN", price=("500.00", "USD"), version=2),
        upsert("XB-PHONE-EUR", PHONE, "CN", price=("5.00", "USD"), version=2),
    ]
    produce_in_order(second.bootstrap, second.input_topic, later)
    bodies = decisions_for(second, later)
    assert [(b["decision"], b["previous_decision"], b["changed"], b["policy_version"]) for b in bodies] == [
        ("allow", "allow", False, new.version), ("block", "allow", True, new.version),
    ]
