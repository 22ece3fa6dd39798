"""Per-product state: transitions, stale versions, tombstones and re-screening, without a broker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from worker.core import Policy, decode_event, parse_policy
from worker.core.state import POLICY_CHANGE, STALE_VERSION, ProductState, decide, rescreen
from worker.stream.processing import DECISION, TOMBSTONE, MemoryStateStore, Processor

DRESS = "Apparel & Accessories > Clothing > Dresses"


def event(version: int | None, country: str, *, product: str = "P-1", path: str = DRESS) -> bytes:
    body: dict[str, Any] = {
        "event_id": f"{product}-v{version}-{country}",
        "product": {"id": product, "seller": {"country": country}, "ship_from_country": country, "category": {"path": path}},
    }
    if version is not None:
        body["product"]["version"] = version
    return orjson.dumps(body)


def run(processor: Processor, raw: bytes | None, key: bytes = b"P-1") -> dict[str, Any] | None:
    outcome = processor.process(key, raw, "in", 0, 1, 1_800_000_000.0)
    assert outcome.kind in (DECISION, TOMBSTONE), outcome
    return None if outcome.value is None else orjson.loads(outcome.value)


@pytest.fixture
def processor(policy: Policy) -> Processor:
    return Processor(policy, MemoryStateStore())


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param([(1, "CN")], [("block", None, True)], id="first-decision-is-a-change"),
        pytest.param([(1, "CN"), (2, "ID"), (3, "CN")],
                     [("block", None, True), ("allow", "block", True), ("block", "allow", True)], id="block-allow-block"),
        pytest.param([(1, "ID"), (2, "ID")], [("allow", None, True), ("allow", "allow", False)], id="same-outcome-is-no-change"),
        pytest.param([(1, "CN"), (1, "CN")], [("block", None, True), ("block", "block", False)], id="same-version-again"),
        pytest.param([(None, "CN"), (None, "ID")], [("block", None, True), ("allow", "block", True)], id="no-versions-never-stale"),
    ],
)
def test_transitions(processor: Processor, steps: list[tuple[int | None, str]], expected: list[tuple[str, str | None, bool]]) -> None:
    seen = []
    for version, country in steps:
        record = run(processor, event(version, country))
        assert record is not None
        seen.append((record["decision"], record["previous_decision"], record["changed"]))
    assert seen == expected


def test_stale_version_repeats_the_current_decision_and_keeps_state(processor: Processor) -> None:
    run(processor, event(5, "CN"))
    before = processor.state.get(b"P-1")
    stale = run(processor, event(4, "ID"))
    assert stale is not None
    assert stale["reasons"] == [STALE_VERSION]
    assert (stale["decision"], stale["previous_decision"], stale["changed"]) == ("block", "block", False)
    assert stale["product_version"] == 4
    assert processor.state.get(b"P-1") == before, "a stale event must not change state"
    newer = run(processor, event(6, "ID"))
    assert newer is not None and (newer["decision"], newer["changed"]) == ("allow", True)


def test_tombstone_clears_state(processor: Processor) -> None:
    run(processor, event(3, "CN"))
    assert run(processor, None) is None
    assert processor.state.get(b"P-1") is None
    again = run(processor, event(1, "CN"))
    assert again is not None and (again["previous_decision"], again["changed"]) == (None, True), "a removed product starts over"


def test_state_round_trips_through_bytes(policy: Policy) -> None:
    transition = decide(decode_event(event(7, "CN")), policy, None, 1_800_000_000.0)
    assert transition.state is not None
    assert ProductState.decode(b"P-1", transition.state.encode()) == transition.state
    assert transition.state.decided_at_ms == 1_800_000_000_000
    assert transition.state.reasons == transition.decision.reasons


def _policy(version: str, *, cluster_for_dresses: str | None) -> Policy:
    return parse_policy({
        "version": version,
        "cross_border": {"home_countries": ["ID"], "signals": ["seller_country", "ship_from_country"]},
        "clusters": {"textile_fashion": {"title": "Textile"}},
        "category_rules": [{"path": DRESS, "cluster": cluster_for_dresses}],
    })


def test_rescreen_publishes_only_flips_and_never_twice_for_one_version() -> None:
    restricted = _policy("v1", cluster_for_dresses="textile_fashion")
    lifted = _policy("v2", cluster_for_dresses=None)
    imported = decide(decode_event(event(1, "CN")), restricted, None).state
    local = decide(decode_event(event(1, "ID", product="P-2")), restricted, None).state
    assert imported is not None and local is not None

    flip = rescreen(imported, lifted)
    assert flip is not None and flip.state is not None
    assert (flip.decision.decision, flip.previous_decision, flip.changed) == ("allow", "block", True)
    assert flip.decision.reasons[0] == POLICY_CHANGE
    assert flip.decision.policy_version == "v2" and flip.state.policy_version == "v2"

    same = rescreen(local, lifted)
    assert same is not None and same.changed is False, "allow stays allow: stored, not published"
    assert rescreen(flip.state, lifted) is None, "already decided under v2"
    assert flip.state.decision_id == flip.decision.decision_id and flip.state.published_id is None, "implied"
    # Not published: the caller keeps the decision in force, whose id the event and v2 no longer give.
    kept = same.state.in_force(local.decision_id)
    assert kept.decision_id == local.decision_id != same.decision.decision_id
    assert ProductState.decode(b"P-2", kept.encode()).decision_id == local.decision_id
    # A block kept under v2b, then flipped (published) under v3: the flip's id is implied again.
    still = rescreen(imported, _policy("v2b", cluster_for_dresses="textile_fashion"))
    assert still is not None and still.changed is False and still.state is not None
    blocked = still.state.in_force(imported.decision_id)
    assert blocked.published_id == imported.decision_id
    lifted_later = rescreen(blocked, _policy("v3", cluster_for_dresses=None))
    assert lifted_later is not None and lifted_later.changed is True and lifted_later.state is not None
    assert lifted_later.state.published_id is None and lifted_later.state.decision_id == lifted_later.decision.decision_id
