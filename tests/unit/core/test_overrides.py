"""Overrides: the document's validation, and what an override in force, set, cleared or expired decides."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.unit.core.test_policy_rules import MIN_PRICE, policy_with
from worker.core import InvalidEvent, decode_event, load_bundled_policy
from worker.core.overrides import InvalidOverride, parse_override
from worker.core.state import ProductState, decide, redecide

POLICY = load_bundled_policy()
NOW = 1_800_000_000.0
DRESS = "Apparel & Accessories > Clothing > Dresses"


def document(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "decision": "allow", "reason": "appeal upheld", "reference": "T-1", "author": "staff",
        "created_at": "2026-12-01T10:00:00Z",
    }
    body.update(changes)
    return orjson.dumps({key: value for key, value in body.items() if value is not ...})


def event(country: str, version: int = 1, *, price: dict[str, str] | None = None) -> Any:
    product: dict[str, Any] = {
        "id": "P-1", "version": version, "seller": {"id": "S-1", "country": country}, "ship_from_country": country,
        "category": {"path": DRESS},
    }
    if price is not None:
        product["price"] = price
    return decode_event(orjson.dumps({"event_id": f"e-{version}-{country}", "product": product}))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        pytest.param(None, document(), "no key", id="no-key"),
        pytest.param(b"", document(), "1 to 128 characters", id="empty-key"),
        pytest.param(b"\xff", document(), "not UTF-8", id="key-not-utf8"),
        pytest.param(b"P-1", b"{", "not JSON", id="not-json"),
        pytest.param(b"P-1", b"[1]", "expected a JSON object", id="not-an-object"),
        pytest.param(b"P-1", document(decision="delist"), "decision: must be allow or block", id="decision-unknown"),
        pytest.param(b"P-1", document(reason=...), "reason: required", id="reason-missing"),
        pytest.param(b"P-1", document(reason="  "), "reason: expected a non-empty string", id="reason-blank"),
        pytest.param(b"P-1", document(reason="x" * 2001), "reason: longer than 2000", id="reason-too-long"),
        pytest.param(b"P-1", document(author=...), "author: required", id="author-missing"),
        pytest.param(b"P-1", document(reference=7), "reference: expected a non-empty string", id="reference-number"),
        pytest.param(b"P-1", document(created_at="yesterday"), "created_at:", id="created-at-not-a-time"),
        pytest.param(b"P-1", document(expires_at="2026-13-01T00:00:00Z"), "expires_at:", id="expires-impossible"),
    ],
)
def test_invalid_documents_name_what_is_wrong(key: bytes | None, value: bytes, message: str) -> None:
    with pytest.raises(InvalidOverride) as caught:
        parse_override(key, value)
    assert message in caught.value.message


def test_a_valid_document_and_its_expiry() -> None:
    override = parse_override(b"P-1", document(expires_at="2026-12-01T11:00:00+01:00", extra={"ignored": True}))
    ten_utc = 1_796_119_200.0  # 2026-12-01T10:00:00Z
    assert (override.product_id, override.decision, override.reference, override.expires_at_s) == (
        "P-1", "allow", "T-1", ten_utc,
    )
    assert override.in_force(ten_utc - 0.1) and not override.in_force(ten_utc)
    assert parse_override(b"P-1", document(reference=None)).reference is None
    assert parse_override(b"P-1", document()).digest != parse_override(b"P-1", document(reason="other")).digest


@pytest.mark.parametrize(
    ("country", "staff", "expected"),
    [
        pytest.param("CN", "allow", ("allow", ("MANUAL_OVERRIDE", "FOREIGN_SELLER", "FOREIGN_SHIP_FROM",
                                                "MATCHED_CATEGORY_PATH"), "block"), id="allow-a-blocked-product"),
        pytest.param("ID", "block", ("block", ("MANUAL_OVERRIDE", "MATCHED_CATEGORY_PATH"), "allow"),
                     id="block-an-allowed-product"),
        pytest.param("CN", "block", ("block", ("MANUAL_OVERRIDE", "FOREIGN_SELLER", "FOREIGN_SHIP_FROM",
                                                "MATCHED_CATEGORY_PATH"), "block"), id="block-what-is-blocked"),
    ],
)
def test_an_override_in_force_decides_with_the_policys_evidence(
    country: str, staff: str, expected: tuple[str, tuple[str, ...], str],
) -> None:
    override = parse_override(b"P-1", document(decision=staff))
    plain = decide(event(country), POLICY, None, NOW)
    transition = decide(event(country), POLICY, None, NOW, staff=override)
    decision, reasons, policy_decision = expected
    assert (transition.decision.decision, transition.decision.reasons, transition.policy_decision) == expected
    assert transition.state is not None and (transition.state.decision, transition.state.reasons) == (decision, reasons)
    assert transition.decision.decision_id != plain.decision.decision_id
    assert transition.state.decision_id == transition.decision.decision_id, "the id of the decision published"
    assert ProductState.decode(b"P-1", transition.state.encode()).decision_id == transition.decision.decision_id
    assert policy_decision == plain.decision.decision


def test_an_override_decides_what_the_policy_cannot_price() -> None:
    priced = policy_with(minimum=MIN_PRICE)  # the bundled policy has no minimum price: one that needs a price
    snack = decode_event(orjson.dumps({"event_id": "e", "product": {
        "id": "P-1", "seller": {"country": "CN"}, "ship_from_country": "CN", "category": {"path": "Electronics"},
    }}))
    with pytest.raises(InvalidEvent, match="price"):
        decide(snack, priced, None, NOW)
    transition = decide(snack, priced, None, NOW, staff=parse_override(b"P-1", document(decision="block")))
    assert (transition.decision.decision, transition.decision.reasons, transition.policy_decision) == (
        "block", ("MANUAL_OVERRIDE",), None,
    )


def test_setting_clearing_and_setting_again_decide_a_known_product_once_each() -> None:
    stored = decide(event("CN"), POLICY, None, NOW).state
    assert stored is not None and stored.decision == "block"
    staff = parse_override(b"P-1", document(decision="allow"))
    assert redecide(stored, POLICY, None) is None, "no override, none before: the policy decides it already"

    set_ = redecide(stored, POLICY, staff, now=NOW)
    assert set_ is not None and set_.state is not None
    assert (set_.decision.decision, set_.changed, set_.decision.reasons[0]) == ("allow", True, "MANUAL_OVERRIDE")
    assert redecide(set_.state, POLICY, staff, now=NOW) is None, "read again after a restart: nothing to do"

    cleared = redecide(set_.state, POLICY, None, staff, now=NOW)
    assert cleared is not None and cleared.state is not None
    assert (cleared.decision.decision, cleared.changed, cleared.decision.reasons[0]) == (
        "block", True, "CROSS_BORDER_RESTRICTED_CLUSTER",
    )
    assert cleared.decision.decision_id not in (set_.decision.decision_id, decide(
        event("CN"), POLICY, None, NOW).decision.decision_id), "the policy's decision again, under an id of its own"
    assert ProductState.decode(b"P-1", cleared.state.encode()) == cleared.state
    assert (set_.state.decision_id, cleared.state.decision_id) == (set_.decision.decision_id, cleared.decision.decision_id)
