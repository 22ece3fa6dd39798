"""Properties: hostile input only ever raises InvalidEvent, and decisions are deterministic and follow the block rule."""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import orjson
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.conftest import VALID_EVENT
from worker.core import InvalidEvent, Policy, classify, decode_event, load_bundled_policy
from worker.core.policy import BUNDLED_POLICY, parse_policy_bytes
from worker.core.classify import BLOCK, Reason
from worker.core.countries import COUNTRY_CODES
from worker.core.errors import ErrorCode
from worker.core.event import HS_CODE_RE
from worker.commands.sample import taxonomy

SETTINGS = settings(max_examples=250, deadline=None)
POLICY = load_bundled_policy()
# The bundled policy as JSON: loading it afresh per example is fast enough (the YAML parser is not).
POLICY_JSON = orjson.dumps(yaml.safe_load(resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes()))
OUTCOMES = {Reason.CROSS_BORDER_RESTRICTED_CLUSTER, Reason.DOMESTIC_ITEM, Reason.NOT_RESTRICTED_CATEGORY}
COUNTRIES = sorted(COUNTRY_CODES)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson can serialise
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["ID", "CN", "62", "6205.20", "aa-1", "Apparel & Accessories", "", " > ", "2026-11-29T10:00:00Z"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _key_paths(document: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    if isinstance(document, dict):
        for key, value in document.items():
            paths.append((*prefix, key))
            paths.extend(_key_paths(value, (*prefix, key)))
    return paths


KEY_PATHS = _key_paths(VALID_EVENT)


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one to three fields replaced by arbitrary JSON values, deleted, or joined by new keys."""
    event = copy.deepcopy(VALID_EVENT)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        *parents, leaf = draw(st.sampled_from(KEY_PATHS))
        target: Any = event
        for key in parents:
            if not isinstance(target, dict) or not isinstance(target.get(key), dict):
                break
            target = target[key]
        else:
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                target[leaf] = draw(json_values)
            elif action == "delete":
                target.pop(leaf, None)
            else:
                target[draw(st.text(max_size=12))] = draw(json_values)
    return event


def decode_or_invalid(raw: bytes) -> None:
    """Decode and classify; InvalidEvent with a known code is the only acceptable failure."""
    try:
        event = decode_event(raw)
    except InvalidEvent as exc:
        assert exc.code in set(ErrorCode)
        assert exc.message
        return
    classify(event, POLICY)


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_invalid_event(raw: bytes) -> None:
    decode_or_invalid(raw)


@SETTINGS
@given(json_values)
def test_arbitrary_json_values_raise_only_invalid_event(value: Any) -> None:
    decode_or_invalid(orjson.dumps(value))


@SETTINGS
@given(mutated_events())
def test_mutated_events_raise_only_invalid_event(event: dict[str, Any]) -> None:
    decode_or_invalid(orjson.dumps(event))


@SETTINGS
@given(mutated_events(), st.integers(min_value=0, max_value=200))
def test_truncated_and_corrupted_events_raise_only_invalid_event(event: dict[str, Any], cut: int) -> None:
    raw = orjson.dumps(event)
    decode_or_invalid(raw[:cut])
    decode_or_invalid(raw[:cut] + b"\xff" + raw[cut + 1:])


# --- valid events --------------------------------------------------------------------------

categories = st.sampled_from(taxonomy())
countries = st.sampled_from(COUNTRIES) | st.just("ID")  # home country often enough to see domestic items
hs_codes = st.none() | st.from_regex(HS_CODE_RE, fullmatch=True) | st.sampled_from(["6109.10", "1905.90", "9703", "2402", "62"])


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    chosen = draw(categories)
    category: dict[str, Any] = {"path": draw(st.sampled_from([chosen.path, chosen.path.upper(), chosen.path.replace(" > ", ">")]))}
    id_form = draw(st.sampled_from(["none", "plain", "gid", "null"]))
    if id_form != "none":
        category["id"] = {"plain": chosen.id, "gid": f"gid://shopify/TaxonomyCategory/{chosen.id}", "null": None}[id_form]
    product: dict[str, Any] = {
        "id": draw(st.text(min_size=1, max_size=128)),
        "seller": {"country": draw(countries)},
        "ship_from_country": draw(countries),
        "category": category,
    }
    if (version := draw(st.none() | st.integers(min_value=0, max_value=2**63 - 1))) is not None:
        product["version"] = version
    if (hs_code := draw(hs_codes)) is not None:
        product["hs_code"] = hs_code
    return {"event_id": draw(st.text(min_size=1, max_size=128)), "product": product}


@SETTINGS
@given(valid_events())
def test_valid_events_decide_deterministically_and_follow_the_block_rule(document: dict[str, Any]) -> None:
    event = decode_event(orjson.dumps(document))
    first, second = classify(event, POLICY), classify(event, POLICY)
    fresh: Policy = parse_policy_bytes(POLICY_JSON)
    assert fresh._path_cache == {} and fresh.digest == POLICY.digest
    assert first == second == classify(event, fresh)

    product = document["product"]
    assert first.cross_border == (product["seller"]["country"] != "ID" or product["ship_from_country"] != "ID")
    assert (first.decision == BLOCK) == (first.cross_border and first.cluster is not None)
    assert first.reasons[0] in OUTCOMES
    assert len(OUTCOMES.intersection(first.reasons)) == 1
    assert len(set(first.reasons)) == len(first.reasons)
    expected_outcome = (
        Reason.NOT_RESTRICTED_CATEGORY if first.cluster is None
        else Reason.CROSS_BORDER_RESTRICTED_CLUSTER if first.cross_border
        else Reason.DOMESTIC_ITEM
    )
    assert first.reasons[0] == expected_outcome
    assert (first.event_id, first.product_id, first.product_version) == (document["event_id"], product["id"], product.get("version"))


@SETTINGS
@given(categories, countries, countries)
def test_case_and_spacing_of_a_real_path_never_change_the_cluster(category: Any, seller: str, ship_from: str) -> None:
    def decide(path: str) -> Any:
        raw = {"event_id": "e", "product": {"id": "p", "seller": {"country": seller}, "ship_from_country": ship_from,
                                            "category": {"path": path}}}
        return classify(decode_event(orjson.dumps(raw)), POLICY)

    plain = decide(category.path)
    for variant in (category.path.lower(), category.path.upper(), "  " + category.path.replace(" > ", "  >\t") + " "):
        assert decide(variant)[4:] == plain[4:]  # everything but the ids
