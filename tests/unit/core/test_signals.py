"""Evasion signals: decision tables for every case (raised or not, flag or hold, holds kept and released)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.unit.conftest import make_event
from tests.unit.core.test_policy_rules import APPAREL, MIN_PRICE, PHONE, SNACKS, policy_with
from worker.core import Policy, ProductEvent, decode_event, parse_policy
from worker.core.classify import OUTCOMES, SIGNAL_CODES, Reason
from worker.core.policy import REVIEW_SIGNALS
from worker.core.state import ProductState, Transition, decide, rescreen
from worker.stream.processing import DECISION, TOMBSTONE, MemoryStateStore, Processor

ROOT = Path(__file__).resolve().parents[3]
DECISION_SCHEMA = Draft202012Validator(json.loads((ROOT / "schemas" / "decision.schema.json").read_text(encoding="utf-8")))
DEC_1 = 1_796_083_200.0  # 2026-12-01T00:00:00Z

ORIGIN = Reason.ORIGIN_CHANGED_AFTER_BLOCK
CATEGORY = Reason.CATEGORY_CHANGED_AFTER_BLOCK
HELD = Reason.HELD_FOR_REVIEW
BLOCKED = [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH]
DOMESTIC = [Reason.DOMESTIC_ITEM, Reason.MATCHED_CATEGORY_PATH]
UNRESTRICTED_ABROAD = [Reason.NOT_RESTRICTED_CATEGORY, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.UNMAPPED_CATEGORY]
UNRESTRICTED_HOME = [Reason.NOT_RESTRICTED_CATEGORY, Reason.UNMAPPED_CATEGORY]
BOTH = list(REVIEW_SIGNALS)
TITLE = "Kemeja batik pria lengan panjang"


def review(signals: list[str] = BOTH, on_signal: str | None = None, enabled: bool = True) -> dict[str, Any]:
    return {"enabled": enabled, "signals": signals} | ({"on_signal": on_signal} if on_signal else {})


FLAG = policy_with(review=review(), version="t-flag")
HOLD = policy_with(review=review(on_signal="hold"), version="t-hold")
POLICIES: dict[str, Policy] = {
    "flag": FLAG,
    "hold": HOLD,
    "off": policy_with(version="t-off"),
    "disabled": policy_with(review=review(on_signal="hold", enabled=False), version="t-disabled"),
    "origin-only": policy_with(review=review(["origin_changed_after_block"]), version="t-origin-only"),
    "category-only": policy_with(review=review(["category_changed_after_block"]), version="t-category-only"),
    "hold-origin": policy_with(review=review(["origin_changed_after_block"], "hold"), version="t-hold-origin"),
    "hold-category": policy_with(review=review(["category_changed_after_block"], "hold"), version="t-hold-category"),
    "flag-exempt-s1": policy_with(exempt=["S-1"], review=review(), version="t-flag-exempt"),
    "flag-minimum-price": policy_with(minimum=MIN_PRICE, review=review(), version="t-flag-minimum"),
    "flag-apparel-from-2027": policy_with(effective={"textile_fashion": "2027-01-01"}, review=review(), version="t-flag-dated"),
}


def ship_from_only(version: str, homes: list[str] | None = None, apparel: str | None = "textile_fashion") -> Policy:
    """A small policy: cross-border means shipped from abroad; dresses and tops restricted unless ``apparel`` is None."""
    return parse_policy({
        "version": version,
        "cross_border": {"home_countries": homes or ["ID"], "signals": ["ship_from_country"]},
        "clusters": {"textile_fashion": {"title": "Textile"}},
        "category_rules": [{"path": "Apparel & Accessories", "cluster": apparel}],
        "review": review(),
    })


POLICIES["ship-from-only"] = ship_from_only("t-ship-from")


def upsert(
    version: int = 1, country: str = "CN", ship_from: str | None = None, *, seller_id: str | None = "S-1",
    title: str | None = TITLE, path: str = APPAREL, price: str = "12.50",
) -> ProductEvent:
    """A product-upsert of P-1 (seller and ship-from both ``country`` unless ``ship_from`` says otherwise)."""
    return decode_event(orjson.dumps(make_event(
        event_id=f"e-{version}-{country}-{seller_id}-{title}-{path}",
        product__id="P-1",
        product__version=version,
        product__title=title if title is not None else ...,
        product__seller={"country": country} | ({"id": seller_id} if seller_id is not None else {}),
        product__ship_from_country=ship_from or country,
        product__category={"path": path},
        product__hs_code=...,
        product__price={"amount": price, "currency": "USD"},
    )))


def stored(transition: Transition) -> ProductState:
    """What the next event finds: the state as stored and read back."""
    assert transition.state is not None
    return ProductState.decode(b"P-1", transition.state.encode())


def check_contract(transition: Transition) -> dict[str, Any]:
    """Every decision: one outcome code, after POLICY_CHANGE and HELD_FOR_REVIEW at most (STALE_VERSION stands
    alone); `review` exactly when a signal is carried."""
    decision = transition.decision
    reasons = list(decision.reasons)
    if reasons[0] == Reason.POLICY_CHANGE:
        reasons = reasons[1:]  # a re-screen's: the decision follows it
    if reasons != [Reason.STALE_VERSION]:
        outcome_at = 1 if reasons[0] == HELD else 0
        assert reasons[outcome_at] in OUTCOMES and len(OUTCOMES.intersection(reasons)) == 1, reasons
    assert len(set(reasons)) == len(reasons), reasons
    if reasons[0] == HELD:
        assert decision.decision == "block"
    record = transition.record("2026-12-01T00:00:00.000Z", {"topic": "in", "partition": 0, "offset": 1})
    assert [error.message for error in DECISION_SCHEMA.iter_errors(record)] == []
    assert record["review"] is bool(set(SIGNAL_CODES) & set(reasons))
    return record


def decide_after(policy: Policy, before: ProductEvent, after: ProductEvent) -> Transition:
    """Decide ``before``, then ``after`` against the state it left, both under ``policy``."""
    first = decide(before, policy, None, DEC_1)
    return decide(after, policy, stored(first), DEC_1)


# --- which events raise a signal ------------------------------------------------------------------------------

SIGNAL_CASES = [
    # (policy, before, after, decision, reasons, raised)
    pytest.param("flag", upsert(1), upsert(2, "ID"), "allow", [*DOMESTIC, ORIGIN], [ORIGIN], id="origin-now-domestic"),
    pytest.param("flag", upsert(1), upsert(2, path=PHONE), "allow", [*UNRESTRICTED_ABROAD, CATEGORY], [CATEGORY],
                 id="category-moved-out-of-the-clusters"),
    pytest.param("flag", upsert(1), upsert(2, "ID", path=PHONE), "allow", [*UNRESTRICTED_HOME, ORIGIN, CATEGORY],
                 [ORIGIN, CATEGORY], id="both-at-once-in-a-fixed-order"),
    pytest.param("flag", upsert(1), upsert(2, "ID", seller_id="S-2"), "allow", DOMESTIC, [], id="another-seller-id"),
    pytest.param("flag", upsert(1), upsert(2, "ID", title="Kemeja batik wanita"), "allow", DOMESTIC, [], id="another-title"),
    pytest.param("flag", upsert(1, title=None), upsert(2, "ID", title=None), "allow", DOMESTIC, [], id="no-title-either-time"),
    pytest.param("flag", upsert(1), upsert(2, "ID", title=None), "allow", DOMESTIC, [], id="title-dropped"),
    pytest.param("flag", upsert(1, title=None), upsert(2, "ID"), "allow", DOMESTIC, [], id="title-added"),
    pytest.param("flag", upsert(1), upsert(2, "ID", price="99.00"), "allow", [*DOMESTIC, ORIGIN], [ORIGIN],
                 id="price-changed-too-still-the-same-goods"),
    # Without a seller id on both sides the seller country is all there is to go by.
    pytest.param("flag", upsert(1, seller_id=None), upsert(2, "ID", seller_id=None), "allow", DOMESTIC, [],
                 id="no-seller-ids-seller-country-changed"),
    pytest.param("flag", upsert(1), upsert(2, "ID", seller_id=None), "allow", DOMESTIC, [], id="seller-id-dropped-country-changed"),
    pytest.param("ship-from-only", upsert(1, seller_id=None), upsert(2, "CN", "ID", seller_id=None), "allow",
                 [Reason.DOMESTIC_ITEM, Reason.MATCHED_CATEGORY_PATH, ORIGIN], [ORIGIN], id="no-seller-ids-same-country-now-ships-from-home"),
    pytest.param("ship-from-only", upsert(1), upsert(2, "CN", "ID", seller_id=None), "allow",
                 [Reason.DOMESTIC_ITEM, Reason.MATCHED_CATEGORY_PATH, ORIGIN], [ORIGIN], id="seller-id-dropped-same-country"),
    pytest.param("ship-from-only", upsert(1), upsert(2, "SG", "ID", seller_id="S-1"), "allow",
                 [Reason.DOMESTIC_ITEM, Reason.MATCHED_CATEGORY_PATH, ORIGIN], [ORIGIN], id="same-seller-id-other-seller-country"),
    pytest.param("ship-from-only", upsert(1), upsert(2, "CN", "SG"), "block",
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH], [],
                 id="moved-abroad-to-abroad-still-blocked"),
    # Only a block lifted by the facts.
    pytest.param("flag", upsert(1), upsert(2, path=SNACKS), "block",
                 [Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                 [], id="into-another-restricted-cluster-still-blocked"),
    pytest.param("flag", upsert(1, "ID"), upsert(2, "ID", path=PHONE), "allow", UNRESTRICTED_HOME, [], id="previously-allowed"),
    pytest.param("flag", upsert(1), upsert(2), "block", BLOCKED, [], id="same-facts-again"),
    pytest.param("flag-exempt-s1", upsert(1, seller_id="S-9"), upsert(2, "ID", seller_id="S-9"), "allow", [*DOMESTIC, ORIGIN],
                 [ORIGIN], id="exemption-list-of-others-changes-nothing"),
    pytest.param("flag-minimum-price", upsert(1, path=PHONE), upsert(2, "ID", path=PHONE), "allow", [*UNRESTRICTED_HOME, ORIGIN],
                 [ORIGIN], id="blocked-by-price-now-domestic"),
    pytest.param("flag-minimum-price", upsert(1, path=PHONE), upsert(2, path=PHONE, price="150.00"), "allow",
                 [*UNRESTRICTED_ABROAD, Reason.PRICE_AT_OR_ABOVE_MINIMUM], [], id="blocked-by-price-now-dearer"),
    pytest.param("flag-minimum-price", upsert(1), upsert(2, path=PHONE), "block",
                 [Reason.CROSS_BORDER_BELOW_MINIMUM_PRICE, Reason.FOREIGN_SELLER, Reason.FOREIGN_SHIP_FROM, Reason.UNMAPPED_CATEGORY],
                 [], id="moved-out-of-the-clusters-but-below-the-minimum-price"),
    pytest.param("flag-minimum-price", upsert(1), upsert(2, path=PHONE, price="150.00"), "allow",
                 [*UNRESTRICTED_ABROAD, Reason.PRICE_AT_OR_ABOVE_MINIMUM, CATEGORY], [CATEGORY], id="moved-out-and-priced-above"),
    # Which signals are on.
    pytest.param("origin-only", upsert(1), upsert(2, "ID", path=PHONE), "allow", [*UNRESTRICTED_HOME, ORIGIN], [ORIGIN],
                 id="origin-only-policy-both-changed"),
    pytest.param("origin-only", upsert(1), upsert(2, path=PHONE), "allow", UNRESTRICTED_ABROAD, [], id="origin-only-policy-category-moved"),
    pytest.param("category-only", upsert(1), upsert(2, "ID"), "allow", DOMESTIC, [], id="category-only-policy-origin-changed"),
    pytest.param("category-only", upsert(1), upsert(2, "ID", path=PHONE), "allow", [*UNRESTRICTED_HOME, CATEGORY], [CATEGORY],
                 id="category-only-policy-both-changed"),
    pytest.param("off", upsert(1), upsert(2, "ID", path=PHONE), "allow", UNRESTRICTED_HOME, [], id="policy-without-review"),
    pytest.param("disabled", upsert(1), upsert(2, "ID", path=PHONE), "allow", UNRESTRICTED_HOME, [], id="review-configured-disabled"),
]


@pytest.mark.parametrize(("name", "before", "after", "decision", "reasons", "raised"), SIGNAL_CASES)
def test_signal_is_raised_exactly_in_these_cases(
    name: str, before: ProductEvent, after: ProductEvent, decision: str, reasons: list[str], raised: list[str],
) -> None:
    transition = decide_after(POLICIES[name], before, after)
    record = check_contract(transition)
    assert (transition.decision.decision, list(transition.decision.reasons), list(transition.signals)) == (decision, reasons, raised)
    assert record["review"] is bool(raised)
    assert transition.state is not None and transition.state.held_signals == (), "flag never holds"


@pytest.mark.parametrize(
    ("old", "new", "event", "reasons"),
    [
        pytest.param(ship_from_only("t-old"), ship_from_only("t-new", apparel=None), upsert(1),
                     [Reason.NOT_RESTRICTED_CATEGORY, Reason.FOREIGN_SHIP_FROM, Reason.MATCHED_CATEGORY_PATH],
                     id="category-carved-out-by-the-new-policy"),
        pytest.param(ship_from_only("t-old"), ship_from_only("t-new", homes=["ID", "SG"]), upsert(1, "SG"),
                     [Reason.DOMESTIC_ITEM, Reason.MATCHED_CATEGORY_PATH], id="country-made-home-by-the-new-policy"),
    ],
)
def test_a_policy_change_alone_raises_nothing(old: Policy, new: Policy, event: ProductEvent, reasons: list[str]) -> None:
    """Blocked under the old policy, allowed under the new one for the same facts: the policy moved, not the seller."""
    first = decide(event, old, None, DEC_1)
    assert first.decision.decision == "block"
    again = decide(event._replace(event_id="e-again", product_version=2), new, stored(first), DEC_1)
    check_contract(again)
    assert (again.decision.decision, list(again.decision.reasons), again.signals) == ("allow", reasons, ())


def test_a_cluster_not_yet_in_force_is_no_move_out_of_the_clusters() -> None:
    dated = POLICIES["flag-apparel-from-2027"]
    first = decide(upsert(1, path=SNACKS), dated, None, DEC_1)
    assert first.decision.decision == "block"
    moved = decide(upsert(2), dated, stored(first), DEC_1)  # apparel: a cluster, but only from 2027
    assert (moved.decision.decision, moved.decision.cluster, moved.signals) == ("allow", "textile_fashion", ())


def test_an_exempt_sellers_allow_raises_nothing() -> None:
    """Blocked before S-1 was exempt; now the policy allows S-1 whatever the origin: not an evasion."""
    before = decide(upsert(1), POLICIES["flag"], None, DEC_1)
    after = decide(upsert(2, "ID"), POLICIES["flag-exempt-s1"], stored(before), DEC_1)
    assert (after.decision.decision, after.decision.reasons[0], after.signals) == ("allow", Reason.SELLER_EXEMPT, ())


def test_a_stale_event_raises_nothing_and_keeps_the_state() -> None:
    first = decide(upsert(5), FLAG, None, DEC_1)
    stale = decide(upsert(4, "ID"), FLAG, stored(first), DEC_1)
    record = check_contract(stale)
    assert (stale.decision.decision, list(stale.decision.reasons), stale.signals, stale.state) == (
        "block", [Reason.STALE_VERSION], (), None,
    )
    assert record["review"] is False


# --- hold ----------------------------------------------------------------------------------------------------

HOLD_CASES = [
    # (policy, after, reasons, held)
    pytest.param("hold", upsert(2, "ID"), [HELD, *DOMESTIC, ORIGIN], [ORIGIN], id="origin"),
    pytest.param("hold", upsert(2, path=PHONE), [HELD, *UNRESTRICTED_ABROAD, CATEGORY], [CATEGORY], id="category"),
    pytest.param("hold", upsert(2, "ID", path=PHONE), [HELD, *UNRESTRICTED_HOME, ORIGIN, CATEGORY], [ORIGIN, CATEGORY], id="both"),
    pytest.param("hold-origin", upsert(2, "ID", path=PHONE), [HELD, *UNRESTRICTED_HOME, ORIGIN], [ORIGIN], id="origin-only-policy-both-changed"),
    pytest.param("hold-category", upsert(2, "ID", path=PHONE), [HELD, *UNRESTRICTED_HOME, CATEGORY], [CATEGORY],
                 id="category-only-policy-both-changed"),
]


@pytest.mark.parametrize(("name", "after", "reasons", "held"), HOLD_CASES)
def test_hold_keeps_the_product_blocked(name: str, after: ProductEvent, reasons: list[str], held: list[str]) -> None:
    transition = decide_after(POLICIES[name], upsert(1), after)
    record = check_contract(transition)
    assert (transition.decision.decision, list(transition.decision.reasons)) == ("block", reasons)
    assert (transition.previous_decision, transition.changed, list(transition.signals)) == ("block", False, held)
    assert record["review"] is True
    state = stored(transition)
    assert (state.decision, list(state.held_signals), list(state.reasons)) == ("block", held, reasons)
    # The state keeps what the product now claims, and the decision says what those facts are.
    assert (state.facts.ship_from_country, state.facts.category_path) == (after.ship_from_country, after.category_path)
    facts_say = decide(after, POLICIES["off"], None, DEC_1).decision
    assert (transition.decision.cross_border, transition.decision.cluster) == (facts_say.cross_border, facts_say.cluster)


HELD_THEN = [
    # (policy for the next event, next event, decision, reasons, still held)
    pytest.param("hold", upsert(3, "ID"), "block", [HELD, *DOMESTIC, ORIGIN], [ORIGIN], id="same-again-stays-held"),
    pytest.param("hold", upsert(3, "ID", seller_id="S-2", title="Other"), "block", [HELD, *DOMESTIC, ORIGIN], [ORIGIN],
                 id="another-seller-and-title-stay-held"),
    pytest.param("hold", upsert(3), "block", [HELD, *BLOCKED, ORIGIN], [ORIGIN], id="blocked-by-its-facts-again-stays-held"),
    pytest.param("hold", upsert(3, "ID", path=PHONE), "block", [HELD, *UNRESTRICTED_HOME, ORIGIN], [ORIGIN],
                 id="a-second-signal-later-adds-nothing"),
    pytest.param("hold-category", upsert(3, "ID"), "allow", DOMESTIC, [], id="policy-holds-other-signals-released"),
    pytest.param("flag", upsert(3, "ID"), "allow", [*DOMESTIC, ORIGIN], [], id="flag-policy-releases-and-flags"),
    pytest.param("flag", upsert(3), "block", BLOCKED, [], id="flag-policy-releases-into-a-block-no-flag"),
    pytest.param("category-only", upsert(3, "ID"), "allow", DOMESTIC, [], id="flag-policy-without-that-signal-releases"),
    pytest.param("off", upsert(3, "ID"), "allow", DOMESTIC, [], id="policy-without-review-releases"),
    pytest.param("disabled", upsert(3, "ID"), "allow", DOMESTIC, [], id="review-disabled-releases"),
]


@pytest.mark.parametrize(("name", "event", "decision", "reasons", "held"), HELD_THEN)
def test_a_held_product_stays_held_until_released(
    name: str, event: ProductEvent, decision: str, reasons: list[str], held: list[str],
) -> None:
    holding = decide_after(HOLD, upsert(1), upsert(2, "ID"))
    assert stored(holding).held_signals == (ORIGIN,)
    transition = decide(event, POLICIES[name], stored(holding), DEC_1)
    check_contract(transition)
    assert (transition.decision.decision, list(transition.decision.reasons)) == (decision, reasons)
    assert transition.signals == (), "a hold's later decisions repeat its signal, they raise none"
    assert list(stored(transition).held_signals) == held
    assert transition.changed is (decision == "allow")


def test_a_stale_event_of_a_held_product_repeats_the_block() -> None:
    holding = decide_after(HOLD, upsert(1), upsert(5, "ID"))
    stale = decide(upsert(4, "ID"), HOLD, stored(holding), DEC_1)
    assert (stale.decision.decision, list(stale.decision.reasons), stale.state) == ("block", [Reason.STALE_VERSION], None)


def test_a_tombstone_forgets_the_hold() -> None:
    processor = Processor(HOLD, MemoryStateStore())

    def send(event: ProductEvent | None) -> dict[str, Any] | None:
        value = None if event is None else orjson.dumps(make_event(
            event_id=event.event_id, product__id="P-1", product__version=event.product_version, product__title=TITLE,
            product__seller={"id": "S-1", "country": event.seller_country}, product__ship_from_country=event.ship_from_country,
            product__category={"path": APPAREL}, product__hs_code=...,
        ))
        outcome = processor.process(b"P-1", value, "in", 0, 0, DEC_1)
        assert outcome.kind in (DECISION, TOMBSTONE)
        return None if outcome.value is None else orjson.loads(outcome.value)

    send(upsert(1))
    held = send(upsert(2, "ID"))
    assert held is not None and held["reasons"][0] == HELD
    assert send(None) is None
    fresh = send(upsert(3, "ID"))
    assert fresh is not None and (fresh["decision"], fresh["reasons"], fresh["review"], fresh["previous_decision"]) == (
        "allow", DOMESTIC, False, None,
    )


# --- re-screening a held product --------------------------------------------------------------------------------

RESCREENS = [
    # (new policy, event that was held, published?, decision, reasons, still held)
    pytest.param(policy_with(review=review(on_signal="hold"), version="t-hold-2"), upsert(2, "ID"), False, "block",
                 [Reason.POLICY_CHANGE, HELD, *DOMESTIC, ORIGIN], [ORIGIN], id="still-held"),
    pytest.param(policy_with(review=review(), version="t-flag-2"), upsert(2, "ID"), True, "allow",
                 [Reason.POLICY_CHANGE, *DOMESTIC, ORIGIN], [], id="released-and-flagged"),
    pytest.param(policy_with(version="t-off-2"), upsert(2, "ID"), True, "allow", [Reason.POLICY_CHANGE, *DOMESTIC], [],
                 id="released-signals-off"),
    pytest.param(policy_with(review=review(["category_changed_after_block"], "hold"), version="t-hold-category-2"), upsert(2, "ID"),
                 True, "allow", [Reason.POLICY_CHANGE, *DOMESTIC], [], id="released-policy-holds-only-another-signal"),
    pytest.param(policy_with(review=review(["origin_changed_after_block"], "hold"), version="t-hold-origin-2"),
                 upsert(2, "ID", path=PHONE), False, "block", [Reason.POLICY_CHANGE, HELD, *UNRESTRICTED_HOME, ORIGIN], [ORIGIN],
                 id="held-by-both-the-policy-keeps-one"),
    pytest.param(policy_with(version="t-off-3"), upsert(2, "ID", path=PHONE), True, "allow",
                 [Reason.POLICY_CHANGE, *UNRESTRICTED_HOME], [], id="held-by-both-released"),
]


@pytest.mark.parametrize(("policy", "held_event", "published", "decision", "reasons", "held"), RESCREENS)
def test_rescreen_of_a_held_product(
    policy: Policy, held_event: ProductEvent, published: bool, decision: str, reasons: list[str], held: list[str],
) -> None:
    holding = stored(decide_after(HOLD, upsert(1), held_event))
    transition = rescreen(holding, policy, DEC_1)
    assert transition is not None
    check_contract(transition)
    assert (transition.changed, transition.decision.decision, list(transition.decision.reasons)) == (published, decision, reasons)
    assert list(stored(transition).held_signals) == held
    assert transition.signals == ()


def test_rescreen_releases_a_hold_into_the_block_its_facts_say_unpublished() -> None:
    """Held under hold, its facts cross-border again by a new policy's narrower home countries: blocked by them."""
    holding = stored(decide_after(HOLD, upsert(1, "CN", "ID"), upsert(2, "CN", "ID", path=PHONE)))
    assert holding.held_signals == (CATEGORY,)
    off = policy_with(version="t-off-4", minimum=MIN_PRICE)
    transition = rescreen(holding, off, DEC_1)
    assert transition is not None
    assert (transition.changed, transition.decision.decision, transition.decision.reasons[1]) == (
        False, "block", Reason.CROSS_BORDER_BELOW_MINIMUM_PRICE,
    )
    assert stored(transition).held_signals == ()


def test_rescreen_raises_no_signal_of_its_own() -> None:
    """A re-screen decides stored facts again; there is no event to compare them with."""
    blocked = stored(decide(upsert(1), POLICIES["off"], None, DEC_1))
    lifted = ship_from_only("t-lifted", apparel=None)
    transition = rescreen(blocked, lifted, DEC_1)
    assert transition is not None and transition.changed
    assert (transition.decision.decision, transition.signals) == ("allow", ())
    assert not set(SIGNAL_CODES) & set(transition.decision.reasons)


# --- the policy's names are the codes --------------------------------------------------------------------------


def test_policy_names_are_the_reason_codes_in_lower_case() -> None:
    assert tuple(name.upper() for name in REVIEW_SIGNALS) == SIGNAL_CODES
    assert FLAG.review_signals == SIGNAL_CODES and FLAG.held_signals == frozenset()
    assert HOLD.held_signals == frozenset(SIGNAL_CODES)
    assert POLICIES["disabled"].review_signals == () and POLICIES["disabled"].held_signals == frozenset()
    assert POLICIES["off"].review is None and POLICIES["off"].review_signals == ()


# --- docs/policy.md shows what the worker does ------------------------------------------------------------------


def _review_section() -> str:
    text = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
    return text.split("\n## Review signals\n", 1)[1].split("\n## ", 1)[0]


def test_the_documented_review_section_is_valid() -> None:
    (example,) = [block.split("```", 1)[0] for block in _review_section().split("```yaml\n")[1:]]
    section = yaml.safe_load(example)
    policy = policy_with(review=section["review"], version="t-doc")
    assert (policy.review_signals, policy.held_signals) == (SIGNAL_CODES, frozenset())


@pytest.mark.parametrize("on_signal", ["flag", "hold"])
def test_the_documented_decisions_are_the_workers(on_signal: str) -> None:
    """P-1001 blocked while shipping from China, back as Indonesian with S-88 and the same title, under 2026.12.0."""
    documented = [orjson.loads(block.split("```", 1)[0]) for block in _review_section().split("```json\n")[1:]]
    policy = policy_with(review=review(on_signal=on_signal), version="2026.12.0")
    processor = Processor(policy, MemoryStateStore())
    records = []
    for index, (country, version) in enumerate([("CN", 7), ("ID", 8)]):
        event = make_event(event_id=f"9f1c-000{index + 1}", product__version=version,
                           product__seller={"id": "S-88", "country": country}, product__ship_from_country=country)
        outcome = processor.process(b"P-1001", orjson.dumps(event), "catalog.product-upserts", 3, 1041 + index,
                                    1_796_198_400.0 + index * 60)
        records.append(orjson.loads(outcome.value or b""))
    assert records[1] == documented[["flag", "hold"].index(on_signal)]
