"""The optional policy rules: effective dates per cluster, exempt sellers, and the cross-border minimum price."""

from __future__ import annotations

import copy
import io
import json
import re
from decimal import Context, Decimal
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.unit.conftest import make_event
from worker.commands import check
from worker.core import InvalidEvent, Policy, classify, decode_event, parse_policy
from worker.core.classify import OUTCOMES, Reason
from worker.core.errors import ErrorCode
from worker.core.policy import BUNDLED_POLICY, parse_instant, parse_policy_bytes
from worker.commands.sample import generate

ROOT = Path(__file__).resolve().parents[3]
DECISION_SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas" / "decision.schema.json").read_text(encoding="utf-8")))

APPAREL = "Apparel & Accessories > Clothing > Clothing Tops"
SNACKS = "Food, Beverages & Tobacco > Food Items > Snack Foods"
PHONE = "Electronics > Communications > Telephony > Mobile Phones"

DEC_1 = 1_796_083_200.0  # 2026-12-01T00:00:00Z
HOUR = 3600.0

MIN_PRICE: dict[str, Any] = {
    "enabled": True,
    "amount": "100.00",
    "currency": "USD",
    "applies_to": "cross_border",
    "exempt_hs_prefixes": ["4901", "4903", "3706", "8523"],
    "exchange_rates": {"IDR": "0.0000625", "CNY": "0.14", "XAA": "0.062499999999999999", "XBB": "0.999999999999999999"},
}


@cache
def _bundled() -> dict[str, Any]:
    return yaml.safe_load(resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes())


def policy_with(
    *, effective: dict[str, str] | None = None, exempt: list[str] | None = None, minimum: dict[str, Any] | None = None,
    review: dict[str, Any] | None = None, version: str = "rules-test-1",
) -> Policy:
    """The bundled policy plus the optional rules given."""
    document = copy.deepcopy(_bundled())
    document["version"] = version
    for cluster, starts in (effective or {}).items():
        document["clusters"][cluster]["effective_from"] = starts
    if exempt is not None:
        document["exempt_sellers"] = exempt
    if minimum is not None:
        document["minimum_price"] = minimum
    if review is not None:
        document["review"] = review
    return parse_policy(document)


def item(
    path: str = APPAREL, *, seller: str = "CN", ship_from: str = "CN", seller_id: str | None = "S-88",
    hs_code: str | None = None, price: tuple[str, str] | None = ("12.50", "USD"),
) -> Any:
    """A decoded event: by default a cheap Chinese blouse sold by S-88, with no category id and no HS code."""
    changes: dict[str, Any] = {
        "product__category": {"path": path},
        "product__seller": {"country": seller} | ({"id": seller_id} if seller_id is not None else {}),
        "product__ship_from_country": ship_from,
        "product__hs_code": hs_code if hs_code is not None else ...,
        "product__price": {"amount": price[0], "currency": price[1]} if price is not None else ...,
    }
    return decode_event(orjson.dumps(make_event(**changes)))


CROSS = [Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM]
BY_PATH = Reason.MATCHED_CATEGORY_PATH
UNMAPPED = Reason.UNMAPPED_CATEGORY


def check_shape(decision: Any) -> None:
    """Every decision keeps the contract: one outcome first, no repeats, valid against the decision schema."""
    assert decision.reasons[0] in OUTCOMES
    assert len(OUTCOMES.intersection(decision.reasons)) == 1
    assert len(set(decision.reasons)) == len(decision.reasons)
    record = decision.record("2026-12-01T00:00:00.000Z", {"file": "x.jsonl", "line": 1})
    assert [error.message for error in DECISION_SCHEMA.iter_errors(record)] == []


# --- effective dates ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("starts", "now", "decision", "reasons"),
    [
        pytest.param("2026-12-01", DEC_1 - 1, "allow", [Reason.NOT_RESTRICTED_CATEGORY, *CROSS, BY_PATH, Reason.CLUSTER_NOT_YET_EFFECTIVE],
                     id="date-one-second-before"),
        pytest.param("2026-12-01", DEC_1 - 0.001, "allow", [Reason.NOT_RESTRICTED_CATEGORY, *CROSS, BY_PATH, Reason.CLUSTER_NOT_YET_EFFECTIVE],
                     id="date-one-millisecond-before"),
        pytest.param("2026-12-01", DEC_1, "block", [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, *CROSS, BY_PATH], id="date-at-midnight-utc-is-effective"),
        pytest.param("2026-12-01", DEC_1 + 1, "block", [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, *CROSS, BY_PATH], id="date-one-second-after"),
        pytest.param("2026-12-01T00:00:00Z", DEC_1 - 1, "allow", [Reason.NOT_RESTRICTED_CATEGORY, *CROSS, BY_PATH, Reason.CLUSTER_NOT_YET_EFFECTIVE],
                     id="timestamp-z-before"),
        pytest.param("2026-12-01T00:00:00Z", DEC_1, "block", [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, *CROSS, BY_PATH], id="timestamp-z-at"),
        pytest.param("2026-12-01T07:00:00+07:00", DEC_1 - 1, "allow",
                     [Reason.NOT_RESTRICTED_CATEGORY, *CROSS, BY_PATH, Reason.CLUSTER_NOT_YET_EFFECTIVE], id="jakarta-offset-same-instant-before"),
        pytest.param("2026-12-01T07:00:00+07:00", DEC_1, "block", [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, *CROSS, BY_PATH],
                     id="jakarta-offset-same-instant-at"),
        # Midnight in Jakarta is 17:00 UTC the day before: seven hours earlier than the bare date.
        pytest.param("2026-12-01T00:00:00+07:00", DEC_1 - 7 * HOUR - 1, "allow",
                     [Reason.NOT_RESTRICTED_CATEGORY, *CROSS, BY_PATH, Reason.CLUSTER_NOT_YET_EFFECTIVE], id="jakarta-midnight-before"),
        pytest.param("2026-12-01T00:00:00+07:00", DEC_1 - 7 * HOUR, "block", [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, *CROSS, BY_PATH],
                     id="jakarta-midnight-at-is-before-utc-midnight"),
        pytest.param("2026-12-01T00:00:00.5Z", DEC_1 + 0.4, "allow",
                     [Reason.NOT_RESTRICTED_CATEGORY, *CROSS, BY_PATH, Reason.CLUSTER_NOT_YET_EFFECTIVE], id="fractional-second-before"),
        pytest.param("2026-12-01T00:00:00.5Z", DEC_1 + 0.5, "block", [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, *CROSS, BY_PATH],
                     id="fractional-second-at"),
    ],
)
def test_cluster_is_restricted_from_its_effective_date(starts: str, now: float, decision: str, reasons: list[str]) -> None:
    result = classify(item(), policy_with(effective={"textile_fashion": starts}), now)
    assert (result.decision, result.cluster, result.cross_border, list(result.reasons)) == (decision, "textile_fashion", True, reasons)
    check_shape(result)


def test_date_only_and_midnight_utc_timestamp_are_the_same_instant() -> None:
    assert parse_instant("2026-12-01") == parse_instant("2026-12-01T00:00:00Z") == parse_instant("2026-12-01T07:00:00+07:00") == DEC_1
    assert parse_instant("2026-12-01T00:00:00+07:00") == DEC_1 - 7 * HOUR
    assert parse_instant("2026-11-30T19:00:00-05:00") == DEC_1


def test_domestic_item_before_the_date_is_not_in_a_restricted_cluster() -> None:
    result = classify(item(seller="ID", ship_from="ID"), policy_with(effective={"textile_fashion": "2026-12-01"}), DEC_1 - 1)
    assert (result.decision, result.cluster) == ("allow", "textile_fashion")
    assert list(result.reasons) == [Reason.NOT_RESTRICTED_CATEGORY, BY_PATH, Reason.CLUSTER_NOT_YET_EFFECTIVE]


def test_a_date_on_one_cluster_leaves_the_others_restricted() -> None:
    policy = policy_with(effective={"textile_fashion": "2026-12-01"})
    result = classify(item(SNACKS), policy, DEC_1 - 1)
    assert (result.decision, result.cluster, list(result.reasons)) == (
        "block", "food_beverage", [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, *CROSS, BY_PATH]
    )


def test_dates_also_apply_to_hs_fallback_matches() -> None:
    event = item("Marketplace > Imported Goods > Assorted", hs_code="6109.10")
    policy = policy_with(effective={"textile_fashion": "2026-12-01"})
    assert classify(event, policy, DEC_1 - 1).decision == "allow"
    assert classify(event, policy, DEC_1).decision == "block"


@pytest.mark.parametrize(
    ("starts", "decision"),
    [
        pytest.param("2000-01-01", "block", id="long-past-date-in-force"),
        pytest.param("9999-01-01", "allow", id="far-future-date-not-yet"),
    ],
)
def test_without_now_the_wall_clock_decides(starts: str, decision: str) -> None:
    """`now=None` reads the clock, so a caller that forgets `now` never blocks before a cluster's date."""
    assert classify(item(), policy_with(effective={"textile_fashion": starts})).decision == decision


def test_now_does_not_matter_without_dates(policy: Policy) -> None:
    event = item()
    assert classify(event, policy) == classify(event, policy, 0.0) == classify(event, policy, DEC_1 * 100)


# --- exempt sellers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "cluster", "reasons"),
    [
        pytest.param(item(), "textile_fashion", [Reason.SELLER_EXEMPT, *CROSS, BY_PATH], id="restricted-cross-border-item"),
        pytest.param(item(seller="ID", ship_from="ID"), "textile_fashion", [Reason.SELLER_EXEMPT, BY_PATH], id="restricted-domestic-item"),
        pytest.param(item(PHONE), None, [Reason.SELLER_EXEMPT, *CROSS, UNMAPPED], id="unrestricted-item"),
        pytest.param(item("Marketplace > Other", hs_code="6109.10"), "textile_fashion", [Reason.SELLER_EXEMPT, *CROSS, Reason.MATCHED_HS_CODE],
                     id="hs-fallback-item"),
    ],
)
def test_exempt_seller_is_never_blocked(event: Any, cluster: str | None, reasons: list[str]) -> None:
    result = classify(event, policy_with(exempt=["S-1", "S-88"]), DEC_1)
    assert (result.decision, result.cluster, list(result.reasons)) == ("allow", cluster, reasons)
    check_shape(result)


@pytest.mark.parametrize(
    "seller_id",
    [
        pytest.param("S-89", id="other-seller"),
        pytest.param("s-88", id="ids-are-case-sensitive"),
        pytest.param("S-88 ", id="no-trimming"),
        pytest.param(None, id="event-without-seller-id"),
    ],
)
def test_only_listed_seller_ids_are_exempt(seller_id: str | None) -> None:
    result = classify(item(seller_id=seller_id), policy_with(exempt=["S-88"]), DEC_1)
    assert (result.decision, result.reasons[0]) == ("block", Reason.CROSS_BORDER_RESTRICTED_CLUSTER)


def test_exempt_seller_skips_the_price_rule_and_its_errors() -> None:
    policy = policy_with(exempt=["S-88"], minimum=MIN_PRICE)
    for event in (item(PHONE, price=("1.00", "USD")), item(PHONE, price=None), item(PHONE, price=("1.00", "EUR"))):
        result = classify(event, policy, DEC_1)
        assert (result.decision, list(result.reasons)) == ("allow", [Reason.SELLER_EXEMPT, *CROSS, UNMAPPED])


def test_exempt_seller_before_an_effective_date_keeps_the_evidence() -> None:
    result = classify(item(), policy_with(exempt=["S-88"], effective={"textile_fashion": "2026-12-01"}), DEC_1 - 1)
    assert list(result.reasons) == [Reason.SELLER_EXEMPT, *CROSS, BY_PATH, Reason.CLUSTER_NOT_YET_EFFECTIVE]


# --- the minimum price ---------------------------------------------------------------------

BELOW = [Reason.CROSS_BORDER_BELOW_MINIMUM_PRICE, *CROSS, UNMAPPED]
MET = [Reason.NOT_RESTRICTED_CATEGORY, *CROSS, UNMAPPED, Reason.PRICE_AT_OR_ABOVE_MINIMUM]
HS_EXEMPT = [Reason.NOT_RESTRICTED_CATEGORY, *CROSS, UNMAPPED, Reason.HS_EXEMPT_FROM_MINIMUM_PRICE]


@pytest.mark.parametrize(
    ("price", "hs_code", "decision", "reasons"),
    [
        pytest.param(("100.01", "USD"), "8517.13", "allow", MET, id="usd-above"),
        pytest.param(("100.00", "USD"), "8517.13", "allow", MET, id="usd-equal-is-not-below"),
        pytest.param(("100", "USD"), "8517.13", "allow", MET, id="usd-equal-without-decimals"),
        pytest.param(("100.000000", "USD"), "8517.13", "allow", MET, id="usd-equal-six-decimals"),
        pytest.param(("99.999999", "USD"), "8517.13", "block", BELOW, id="usd-a-millionth-below"),
        pytest.param(("12.50", "USD"), "8517.13", "block", BELOW, id="usd-below"),
        pytest.param(("0", "USD"), "8517.13", "block", BELOW, id="usd-free"),
        pytest.param(("1600000", "IDR"), "8517.13", "allow", MET, id="idr-converts-to-exactly-100"),
        pytest.param(("1599999", "IDR"), "8517.13", "block", BELOW, id="idr-99.9999375-is-below-no-rounding-to-cents"),
        pytest.param(("1599999.999999", "IDR"), "8517.13", "block", BELOW, id="idr-a-fraction-of-a-rupiah-below"),
        pytest.param(("714.29", "CNY"), "8517.13", "allow", MET, id="cny-above"),
        pytest.param(("714.28", "CNY"), "8517.13", "block", BELOW, id="cny-below"),
        # Binary floating point would call both of these 100.0 and allow them; Decimal sees they are below.
        pytest.param(("1600", "XAA"), "8517.13", "block", BELOW, id="float-would-round-up-to-100"),
        pytest.param(("100", "XBB"), "8517.13", "block", BELOW, id="float-would-round-up-rate-just-under-1"),
        pytest.param(("12.50", "USD"), "4901.99", "allow", HS_EXEMPT, id="book-exempt"),
        pytest.param(("12.50", "USD"), "4903", "allow", HS_EXEMPT, id="childrens-book-exempt"),
        pytest.param(("12.50", "USD"), "3706.10", "allow", HS_EXEMPT, id="film-exempt"),
        pytest.param(("12.50", "USD"), "8523.49.10", "allow", HS_EXEMPT, id="recorded-media-exempt-eight-digits"),
        pytest.param(("12.50", "EUR"), "8523.49", "allow", HS_EXEMPT, id="exempt-hs-needs-no-rate"),
        pytest.param(None, "4901.10", "allow", HS_EXEMPT, id="exempt-hs-needs-no-price"),
        pytest.param(("12.50", "USD"), "49", "block", BELOW, id="chapter-shorter-than-the-exempt-prefix-is-not-exempt"),
        pytest.param(("12.50", "USD"), "4902", "block", BELOW, id="newspapers-not-in-the-list"),
        pytest.param(("12.50", "USD"), None, "block", BELOW, id="no-hs-code-no-exemption"),
    ],
)
def test_minimum_price_for_cross_border_items_outside_the_clusters(
    price: tuple[str, str] | None, hs_code: str | None, decision: str, reasons: list[str]
) -> None:
    result = classify(item(PHONE, price=price, hs_code=hs_code), policy_with(minimum=MIN_PRICE), DEC_1)
    assert (result.decision, result.cluster, list(result.reasons)) == (decision, None, reasons)
    check_shape(result)


@pytest.mark.parametrize(
    ("price", "code", "message"),
    [
        pytest.param(("12.50", "EUR"), ErrorCode.NO_EXCHANGE_RATE,
                     "product.price.currency: no exchange rate from 'EUR' to 'USD' in policy rules-test-1", id="eur-without-rate"),
        pytest.param(("100000.00", "JPY"), ErrorCode.NO_EXCHANGE_RATE,
                     "product.price.currency: no exchange rate from 'JPY' to 'USD' in policy rules-test-1", id="jpy-without-rate-even-if-expensive"),
        pytest.param(None, ErrorCode.PRICE_REQUIRED,
                     "product.price: required for cross-border items outside the restricted clusters while policy rules-test-1 "
                     "has a minimum price (100.00 USD)", id="no-price"),
    ],
)
def test_a_price_the_rule_cannot_judge_is_a_dead_letter(price: tuple[str, str] | None, code: ErrorCode, message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        classify(item(PHONE, price=price, hs_code="8517.13"), policy_with(minimum=MIN_PRICE), DEC_1)
    assert (caught.value.code, caught.value.message) == (code, message)
    assert caught.value.retriable is False


@pytest.mark.parametrize(
    ("event", "reasons"),
    [
        pytest.param(item(PHONE, seller="ID", ship_from="ID", price=("1.00", "USD")), [Reason.NOT_RESTRICTED_CATEGORY, UNMAPPED],
                     id="domestic-cheap-item"),
        pytest.param(item(PHONE, seller="ID", ship_from="ID", price=None), [Reason.NOT_RESTRICTED_CATEGORY, UNMAPPED],
                     id="domestic-item-needs-no-price"),
        pytest.param(item(PHONE, seller="ID", ship_from="ID", price=("1.00", "EUR")), [Reason.NOT_RESTRICTED_CATEGORY, UNMAPPED],
                     id="domestic-item-needs-no-rate"),
    ],
)
def test_minimum_price_leaves_domestic_items_alone(event: Any, reasons: list[str]) -> None:
    result = classify(event, policy_with(minimum=MIN_PRICE), DEC_1)
    assert (result.decision, list(result.reasons)) == ("allow", reasons)


@pytest.mark.parametrize(
    "price",
    [pytest.param(("500.00", "USD"), id="expensive"), pytest.param(None, id="no-price"), pytest.param(("1.00", "EUR"), id="no-rate")],
)
def test_restricted_cluster_blocks_regardless_of_price(price: tuple[str, str] | None) -> None:
    result = classify(item(APPAREL, price=price), policy_with(minimum=MIN_PRICE), DEC_1)
    assert (result.decision, list(result.reasons)) == ("block", [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, *CROSS, BY_PATH])


def test_cluster_not_yet_effective_falls_to_the_price_rule() -> None:
    policy = policy_with(minimum=MIN_PRICE, effective={"textile_fashion": "2026-12-01"})
    cheap, dear = item(APPAREL, price=("12.50", "USD")), item(APPAREL, price=("150.00", "USD"))
    blocked, allowed = classify(cheap, policy, DEC_1 - 1), classify(dear, policy, DEC_1 - 1)
    assert (blocked.decision, blocked.cluster, list(blocked.reasons)) == (
        "block", "textile_fashion", [Reason.CROSS_BORDER_BELOW_MINIMUM_PRICE, *CROSS, BY_PATH, Reason.CLUSTER_NOT_YET_EFFECTIVE]
    )
    assert (allowed.decision, list(allowed.reasons)) == (
        "allow", [Reason.NOT_RESTRICTED_CATEGORY, *CROSS, BY_PATH, Reason.CLUSTER_NOT_YET_EFFECTIVE, Reason.PRICE_AT_OR_ABOVE_MINIMUM]
    )
    assert classify(dear, policy, DEC_1).reasons[0] == Reason.CROSS_BORDER_RESTRICTED_CLUSTER


@pytest.mark.parametrize(
    ("price", "decision"),
    [
        pytest.param(("1549999.99", "IDR"), "block", id="idr-below"),
        pytest.param(("1550000", "IDR"), "allow", id="idr-equal"),
        pytest.param(("99.99", "USD"), "block", id="usd-99.99-is-1549845-rupiah"),
        pytest.param(("100", "USD"), "allow", id="usd-100-is-1550000-rupiah"),
    ],
)
def test_threshold_in_another_currency(price: tuple[str, str], decision: str) -> None:
    rule = {"enabled": True, "amount": "1550000", "currency": "IDR", "exchange_rates": {"USD": "15500"}}
    assert classify(item(PHONE, price=price), policy_with(minimum=rule), DEC_1).decision == decision


def test_conversion_is_exact_at_the_largest_amounts_and_rates() -> None:
    policy = policy_with(minimum={**MIN_PRICE, "exchange_rates": {**MIN_PRICE["exchange_rates"], "XAA": "999999999999999.999999999999999999"}})
    rule = policy.active_minimum_price
    assert rule is not None
    exact = Context(prec=200).multiply(Decimal("999999999999999.999999"), Decimal("999999999999999.999999999999999999"))
    assert rule.convert("999999999999999.999999", "XAA", policy.version) == exact
    assert rule.convert("12.50", "USD", policy.version) == Decimal("12.50")
    assert rule.convert("1599999", "IDR", policy.version) == Decimal("99.9999375")


def test_disabled_minimum_price_changes_nothing(policy: Policy) -> None:
    disabled = policy_with(minimum={**MIN_PRICE, "enabled": False})
    assert disabled.minimum_price is not None and disabled.active_minimum_price is None
    for event in (item(PHONE, price=("1.00", "USD")), item(PHONE, price=None), item(PHONE, price=("1.00", "EUR"))):
        assert classify(event, disabled, DEC_1)[4:8] == classify(event, policy, DEC_1)[4:8]


# --- absent rules: the old decision ---------------------------------------------------------


def _sample_events(count: int) -> list[Any]:
    events = []
    for _key, value in generate(count, seed=11, malformed_ratio=0.0):
        try:
            events.append(decode_event(value))
        except InvalidEvent:
            continue
    return events


def test_inert_rules_decide_exactly_like_the_bundled_policy(policy: Policy) -> None:
    """Dates long past, a seller list that matches no one and a disabled price rule: every decision as before."""
    inert = policy_with(
        effective={name: "2020-01-01" for name in ("textile_fashion", "food_beverage", "crafts")},
        exempt=["nobody-sells-as-this"],
        minimum={**MIN_PRICE, "enabled": False},
    )
    events = _sample_events(3000)
    assert len(events) > 2500
    for event in events:
        before, after = classify(event, policy), classify(event, inert, DEC_1)
        assert before[2:8] == after[2:8], event  # everything but the ids and the policy version
        assert (before.decision == "block") == (before.cross_border and before.cluster is not None)


def test_bundled_policy_has_none_of_the_optional_rules(policy: Policy) -> None:
    assert policy.review is None and policy.review_signals == () and policy.held_signals == frozenset()
    assert policy.exempt_sellers == frozenset()
    assert policy.minimum_price is None and policy.active_minimum_price is None
    assert all(cluster.effective_from is None for cluster in policy.clusters.values())
    assert policy.effective_from == {}


# --- loading the new keys --------------------------------------------------------------------


def test_parsed_values() -> None:
    policy = policy_with(effective={"crafts": "2026-12-01T07:00:00+07:00"}, exempt=["S-1", "S-2"], minimum=MIN_PRICE)
    crafts = policy.clusters["crafts"]
    assert (crafts.effective_from, crafts.effective_from_text) == (DEC_1, "2026-12-01T07:00:00+07:00")
    assert policy.clusters["textile_fashion"].effective_from is None
    assert policy.exempt_sellers == frozenset({"S-1", "S-2"})
    rule = policy.minimum_price
    assert rule is not None and rule is policy.active_minimum_price
    assert (rule.amount, rule.currency, rule.applies_to) == (Decimal("100.00"), "USD", "cross_border")
    assert rule.exempt_hs_prefixes == frozenset({"4901", "4903", "3706", "8523"})
    assert rule.exchange_rates["IDR"] == Decimal("0.0000625")


@pytest.mark.parametrize(
    ("review", "signals", "held", "summary"),
    [
        pytest.param(None, (), frozenset(), "optional rules: none", id="absent"),
        pytest.param({"enabled": True, "signals": ["category_changed_after_block", "origin_changed_after_block"]},
                     (Reason.ORIGIN_CHANGED_AFTER_BLOCK, Reason.CATEGORY_CHANGED_AFTER_BLOCK), frozenset(),
                     "review signals origin_changed_after_block, category_changed_after_block (on_signal: flag)",
                     id="flag-by-default-in-a-fixed-order"),
        pytest.param({"enabled": True, "signals": ["category_changed_after_block"], "on_signal": "hold", "note": "issue 17"},
                     (Reason.CATEGORY_CHANGED_AFTER_BLOCK,), frozenset({Reason.CATEGORY_CHANGED_AFTER_BLOCK}),
                     "review signals category_changed_after_block (on_signal: hold)", id="hold-one"),
        pytest.param({"enabled": False, "signals": ["origin_changed_after_block"], "on_signal": "hold"}, (), frozenset(),
                     "review signals origin_changed_after_block (on_signal: hold) (configured, disabled)", id="configured-disabled"),
    ],
)
def test_review_section_parsed(review: dict[str, Any] | None, signals: tuple[str, ...], held: frozenset[str], summary: str) -> None:
    policy = policy_with(review=review)
    assert (policy.review_signals, policy.held_signals) == (signals, held)
    assert policy.summary().endswith(summary), policy.summary()


def test_applies_to_defaults_to_cross_border() -> None:
    rule = policy_with(minimum={"enabled": True, "amount": "100", "currency": "USD"}).minimum_price
    assert rule is not None
    assert (rule.applies_to, rule.exempt_hs_prefixes, dict(rule.exchange_rates)) == ("cross_border", frozenset(), {})


def test_unquoted_yaml_dates_are_read_as_written_and_digest_like_json() -> None:
    """Plain YAML would turn `2026-12-01` into a date object; the loader keeps the string a JSON document holds."""
    bundled = resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes()
    as_yaml = parse_policy_bytes(
        bundled.replace(b'\n    title: "Crafts"\n', b'\n    title: "Crafts"\n    effective_from: 2026-12-01\n', 1)
        .replace(b'\n    title: "Food & beverage"\n', b'\n    title: "Food & beverage"\n    effective_from: 2026-12-01T07:00:00+07:00\n', 1),
        source="yaml",
    )
    document = copy.deepcopy(_bundled())
    document["clusters"]["crafts"]["effective_from"] = "2026-12-01"
    document["clusters"]["food_beverage"]["effective_from"] = "2026-12-01T07:00:00+07:00"
    as_json = parse_policy_bytes(orjson.dumps(document), source="json")
    assert as_yaml.clusters["crafts"].effective_from_text == "2026-12-01"
    assert as_yaml.clusters["crafts"].effective_from == as_yaml.clusters["food_beverage"].effective_from == DEC_1
    assert as_yaml.digest == as_json.digest


def test_unquoted_yaml_date_as_version_is_a_string() -> None:
    bundled = resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes()
    assert parse_policy_bytes(bundled.replace(b'version: "2026.11.0"', b"version: 2026-12-01")).version == "2026-12-01"


def test_bundled_policy_examples_of_the_optional_rules_are_valid_when_uncommented() -> None:
    text = resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_text(encoding="utf-8")
    tail = text.split("# --- optional rules", 1)[1]
    examples = yaml.safe_load("\n".join(line[4:] for line in tail.splitlines() if line.startswith("#   ")))
    assert set(examples) == {"clusters", "exempt_sellers", "minimum_price", "review"}
    document = copy.deepcopy(_bundled())
    document["clusters"]["crafts"].update(examples["clusters"]["crafts"])
    document.update(exempt_sellers=examples["exempt_sellers"], minimum_price=examples["minimum_price"], review=examples["review"])
    policy = parse_policy_bytes(orjson.dumps(document))
    assert policy.clusters["crafts"].effective_from == DEC_1 - 7 * HOUR
    assert policy.active_minimum_price is not None and policy.exempt_sellers
    assert policy.review_signals == (Reason.ORIGIN_CHANGED_AFTER_BLOCK, Reason.CATEGORY_CHANGED_AFTER_BLOCK)
    assert classify(item(PHONE, hs_code="4901.99"), policy, DEC_1).reasons[-1] == Reason.HS_EXEMPT_FROM_MINIMUM_PRICE


def test_policy_schema_examples_load() -> None:
    schema = json.loads((ROOT / "schemas" / "policy.schema.json").read_text(encoding="utf-8"))
    loaded = [parse_policy(example) for example in schema["examples"]]
    assert any(policy.active_minimum_price is not None and policy.exempt_sellers for policy in loaded)
    assert any(policy.held_signals for policy in loaded)


# --- the contract lists every code --------------------------------------------------------


def _readme_codes(heading: str) -> set[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"\n### {heading}\n", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([A-Z_0-9]+)` \|", section, flags=re.MULTILINE))


def test_readme_lists_every_reason_code() -> None:
    codes = {value for name, value in vars(Reason).items() if name.isupper()}
    assert _readme_codes("Reason codes") == codes
    assert OUTCOMES <= codes


def test_readme_and_dead_letter_schema_list_every_error_code() -> None:
    schema = json.loads((ROOT / "schemas" / "dead-letter.schema.json").read_text(encoding="utf-8"))
    assert set(schema["properties"]["error"]["properties"]["code"]["enum"]) == set(ErrorCode)
    assert _readme_codes("Dead-letter error codes") == set(ErrorCode)


# --- the offline check passes the decision time and reports price errors per line ---------------


def test_check_decides_at_the_time_it_stamps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check.time, "time", lambda: DEC_1 - 1)
    out, err = io.BytesIO(), io.StringIO()
    policy = policy_with(effective={"textile_fashion": "2026-12-01"})
    summary = check.check_lines([orjson.dumps(make_event()) + b"\n"], policy, out, err, source_name="-")
    record = orjson.loads(out.getvalue())
    assert (record["decision"], record["decided_at"]) == ("allow", "2026-11-30T23:59:59.000Z")
    assert record["reasons"][-1] == Reason.CLUSTER_NOT_YET_EFFECTIVE
    assert summary.decisions == {"allow": 1}


def test_check_reports_price_errors_per_line() -> None:
    lines = [
        orjson.dumps(make_event(product__category={"path": PHONE}, product__hs_code=..., product__price=price)) + b"\n"
        for price in ({"amount": "150.00", "currency": "USD"}, {"amount": "12.50", "currency": "EUR"}, ...)
    ]
    out, err = io.BytesIO(), io.StringIO()
    summary = check.check_lines(lines, policy_with(minimum=MIN_PRICE), out, err, source_name="-")
    assert err.getvalue().splitlines() == [
        "line 2: NO_EXCHANGE_RATE: product.price.currency: no exchange rate from 'EUR' to 'USD' in policy rules-test-1",
        "line 3: PRICE_REQUIRED: product.price: required for cross-border items outside the restricted clusters while "
        "policy rules-test-1 has a minimum price (100.00 USD)",
    ]
    assert summary.errors == {"NO_EXCHANGE_RATE": 1, "PRICE_REQUIRED": 1}
    assert summary.decisions == {"allow": 1}
