"""The fast paths agree with the reference paths: decoding, classification, state and whole decisions, byte for byte."""

from __future__ import annotations

import copy
import hashlib
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import astuple

from tests.unit.conftest import VALID_EVENT, make_event
from tests.unit.core.test_policy_rules import MIN_PRICE, PHONE, SNACKS, policy_with
from tests.unit.core.test_properties import json_values, mutated_events
from worker.core import InvalidEvent, Policy, ProductEvent, decode_event, load_bundled_policy
from worker.core.classify import Decision, classify, decision_id, judge_afresh
from worker.core.clock import format_timestamp
from worker.core.event import EventFacts, decode_event_reference, decode_typical
from worker.core.state import _V1_FACT_FIELDS, ProductState, StoredState, title_digest
from worker.stream.processing import MemoryStateStore, Outcome, Processor
from worker.commands.sample import generate, taxonomy

SETTINGS = settings(max_examples=300, deadline=None)
POLICY = load_bundled_policy()


def outcome_of(decode: Any, raw: bytes) -> ProductEvent | tuple[str, str]:
    try:
        return decode(raw)
    except InvalidEvent as exc:
        return (exc.code, exc.message)


def assert_decodes_alike(raw: bytes) -> None:
    """decode_event gives what the reference gives, error code and message included; decode_typical only takes what it may."""
    expected = outcome_of(decode_event_reference, raw)
    assert outcome_of(decode_event, raw) == expected
    facts = decode_typical(raw)
    if facts is not None:
        assert isinstance(expected, ProductEvent)
        assert ProductEvent(*astuple(facts)) == expected
        assert tuple(type(value) for value in astuple(facts)) == tuple(type(value) for value in expected)


# --- decoding ------------------------------------------------------------------------------


def test_facts_are_product_event_in_its_order() -> None:
    assert EventFacts.__struct_fields__ == ProductEvent._fields == _V1_FACT_FIELDS


def test_typical_event_takes_the_fast_path() -> None:
    raw = orjson.dumps(VALID_EVENT)
    assert decode_typical(raw) is not None
    assert_decodes_alike(raw)


def _with(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert old in raw, old
    return raw.replace(old, new, 1)


TYPICAL = orjson.dumps(VALID_EVENT)
ASTRAL = "\U0001f600"

EDGE_CASES = [
    # numbers: JSON does not tell 7.0 from 7, the schema's integers do not stop at 64 bits, orjson stops at doubles
    _with(TYPICAL, b'"version":7', b'"version":7.0'),
    _with(TYPICAL, b'"version":7', b'"version":7.5'),
    _with(TYPICAL, b'"version":7', b'"version":1e2'),
    _with(TYPICAL, b'"version":7', b'"version":1E2'),
    _with(TYPICAL, b'"version":7', b'"version":-0'),
    _with(TYPICAL, b'"version":7', b'"version":-1'),
    _with(TYPICAL, b'"version":7', b'"version":9223372036854775807'),
    _with(TYPICAL, b'"version":7', b'"version":9223372036854775808'),
    _with(TYPICAL, b'"version":7', b'"version":18446744073709551616'),
    _with(TYPICAL, b'"version":7', b'"version":' + b"9" * 400),
    _with(TYPICAL, b'"version":7', b'"version":1e400'),
    _with(TYPICAL, b'"version":7', b'"version":true'),
    _with(TYPICAL, b'"version":7', b'"version":"7"'),
    _with(TYPICAL, b'"version":7', b'"version":null'),
    _with(TYPICAL, b'"version":7', b'"version":NaN'),
    # extra fields, at every level, holding what orjson rejects or accepts
    _with(TYPICAL, b'{"event_id"', b'{"x":1e400,"event_id"'),
    _with(TYPICAL, b'{"event_id"', b'{"x":' + b"1" * 400 + b',"event_id"'),
    _with(TYPICAL, b'{"event_id"', b'{"x":12345678901234567890123,"event_id"'),
    _with(TYPICAL, b'{"event_id"', b'{"x":"\xff","event_id"'),
    _with(TYPICAL, b'{"event_id"', b'{"\xff":1,"event_id"'),
    _with(TYPICAL, b'{"event_id"', b'{"x":' + b"[" * 600 + b"]" * 600 + b',"event_id"'),
    _with(TYPICAL, b'{"event_id"', b'{"x":' + b"[" * 2000 + b"]" * 2000 + b',"event_id"'),
    _with(TYPICAL, b'"seller":{', b'"seller":{"rating":4.5,'),
    _with(TYPICAL, b'"category":{', b'"category":{"name":"Tops",'),
    _with(TYPICAL, b'"price":{', b'"price":{"tax":null,'),
    _with(TYPICAL, b'"product":{', b'"product":{"images":[{"url":"x"}],'),
    _with(TYPICAL, b'"seller":{', b'"seller":{"x":"\xed\xa0\x80",'),
    _with(TYPICAL, b'"price":{', b'"price":{"x":-1e400,'),
    _with(TYPICAL, b'"price":{', b'"price":{"x":1' + b"0" * 310 + b','),
    _with(TYPICAL, b'"price":{', b'"price":{"x":"\\ud800",'),
    _with(TYPICAL, b'"price":{', b'"price":{"x":NaN,'),
    _with(TYPICAL, b'"price":{', b'"price":{"x":' + b"{" * 1100 + b"}" * 1100 + b','),
    # escaped keys are the same keys: last one counts, with or without extra fields
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"9f1c-0001","event\\u005fid":"second"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"9f1c-0001","event\\u005fid":"second","x":1'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"x":1,"event\\u005fid":"first","event_id":"9f1c-0001"'),
    _with(TYPICAL, b'"country":"CN"', b'"country":"CN","\\u0063ountry":"XX","x":1'),
    # duplicate keys: the last one counts, whatever came before
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"first","event_id":"9f1c-0001"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"9f1c-0001","event_id":"second"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":7,"event_id":"9f1c-0001"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"9f1c-0001","event_id":7'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"9f1c-0001","event_id":""'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"9f1c-0001","event_id":null'),
    _with(TYPICAL, b'"version":7', b'"version":7,"version":8'),
    _with(TYPICAL, b'"version":7', b'"version":7,"version":null'),
    _with(TYPICAL, b'"version":7', b'"version":"x","version":7'),
    _with(TYPICAL, b'"country":"CN"', b'"country":"XX","country":"CN"'),
    _with(TYPICAL, b'"country":"CN"', b'"country":"CN","country":"XX"'),
    _with(TYPICAL, b'"path":"', b'"path":"A >  > B","path":"'),
    _with(TYPICAL, b'"hs_code":"6205.20"', b'"hs_code":"6205.20","hs_code":"62-05"'),
    _with(TYPICAL, b'"hs_code":"6205.20"', b'"hs_code":"62-05","hs_code":"6205.20"'),
    _with(TYPICAL, b'"product":{', b'"product":{"id":"P-0","seller":{"country":"ID"},"ship_from_country":"ID",'
                                 b'"category":{"path":"A"},"version":1},"product":{'),
    _with(TYPICAL, b'"product":{', b'"product":{},"product":{'),
    TYPICAL[:-1] + b',"product":{"id":"P-2","seller":{"country":"ID"},"ship_from_country":"ID","category":{"path":"A"}}}',
    TYPICAL[:-1] + b',"product":null}',
    TYPICAL[:-1] + b',"product":{"id":"P-2"}}',
    # strings: unicode, escapes, bounds counted in code points, not UTF-8
    _with(TYPICAL, b'"title":"Kemeja', '"title":"\\u0000 \\" \\\\ \\/ \\n é 中文 \u2028 ' .encode() + ASTRAL.encode() + b" Kemeja"),
    _with(TYPICAL, b'"title":"Kemeja batik pria lengan panjang"', b'"title":"' + (ASTRAL * 2000).encode() + b'"'),
    _with(TYPICAL, b'"title":"Kemeja batik pria lengan panjang"', b'"title":"' + (ASTRAL * 2001).encode() + b'"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"' + ("é" * 128).encode() + b'"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"' + ("é" * 129).encode() + b'"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"\\ud83d\\ude00"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"\\ud83d"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"\\ude00x"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"\xed\xa0\x80"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"\xc0\x80"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"\xf4\x90\x80\x80"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"a\x01b"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":"a\x7fb"'),
    _with(TYPICAL, b'"event_id":"9f1c-0001"', b'"event_id":""'),
    _with(TYPICAL, b'"title":"Kemeja batik pria lengan panjang"', b'"title":"\xc3\x28"'),
    _with(TYPICAL, b'"country":"CN"', b'"country":"\\u0043N"'),
    _with(TYPICAL, b'"country":"CN"', b'"country":"cn"'),
    _with(TYPICAL, b'"country":"CN"', b'"country":"CN "'),
    _with(TYPICAL, b'"country":"CN"', b'"country":"XK"'),
    _with(TYPICAL, b'"ship_from_country":"CN"', b'"ship_from_country":"C\xff"'),
    _with(TYPICAL, b'"currency":"USD"', b'"currency":"usd"'),
    _with(TYPICAL, b'"currency":"USD"', b'"currency":"US"'),
    _with(TYPICAL, b'"currency":"USD"', b'"currency":"\xc3\x9cSD"'),
    _with(TYPICAL, b'"amount":"12.50"', b'"amount":"012.50"'),
    _with(TYPICAL, b'"amount":"12.50"', b'"amount":"12.5000000"'),
    _with(TYPICAL, b'"amount":"12.50"', b'"amount":12.50'),
    _with(TYPICAL, b'"amount":"12.50"', b'"amount":"\xd9\xa1\xd9\xa2"'),  # Arabic-Indic digits are not [0-9]
    _with(TYPICAL, b'"occurred_at":"2026-11-29T10:00:00Z"', b'"occurred_at":"2026-11-29T10:00:00Z\\n"'),
    _with(TYPICAL, b'"occurred_at":"2026-11-29T10:00:00Z"', b'"occurred_at":"2026-11-29 10:00:00Z"'),
    _with(TYPICAL, b'"occurred_at":"2026-11-29T10:00:00Z"', b'"occurred_at":""'),
    _with(TYPICAL, b'"occurred_at":"2026-11-29T10:00:00Z"', b'"occurred_at":null'),
    _with(TYPICAL, b'"event_type":"product.upserted"', b'"event_type":""'),
    _with(TYPICAL, b'"event_type":"product.upserted"', b'"event_type":' + orjson.dumps("x" * 65)),
    _with(TYPICAL, b'"id":"aa-1-13"', b'"id":"gid://shopify/TaxonomyCategory/aa-1-13"'),
    _with(TYPICAL, b'"id":"aa-1-13"', b'"id":"gid://shopify/TaxonomyCategory/aa-1-13\\n"'),
    _with(TYPICAL, b'"id":"aa-1-13"', b'"id":""'),
    _with(TYPICAL, b'"id":"aa-1-13"', b'"id":null'),
    _with(TYPICAL, b'"hs_code":"6205.20"', b'"hs_code":"620520"'),
    _with(TYPICAL, b'"hs_code":"6205.20"', b'"hs_code":"62.05"'),
    _with(TYPICAL, b'"hs_code":"6205.20"', b'"hs_code":""'),
    _with(TYPICAL, b'"hs_code":"6205.20"', b'"hs_code":"\\u0036\\u0032"'),
    _with(TYPICAL, b'"path":"Apparel & Accessories > Clothing > Clothing Tops"', b'"path":"  apparel &  accessories>clothing  "'),
    _with(TYPICAL, b'"path":"Apparel & Accessories > Clothing > Clothing Tops"', b'"path":"' + b" > ".join([b"A"] * 17) + b'"'),
    _with(TYPICAL, b'"path":"Apparel & Accessories > Clothing > Clothing Tops"', b'"path":"A\\n> B"'),
    _with(TYPICAL, b'"seller":{"id":"S-88",', b'"seller":{"id":null,'),
    _with(TYPICAL, b'"seller":{"id":"S-88",', b'"seller":{"id":"",'),
    _with(TYPICAL, b'"seller":{"id":"S-88",', b'"seller":{"id":88,'),
    _with(TYPICAL, b'"price":{"amount":"12.50","currency":"USD"}', b'"price":null'),
    _with(TYPICAL, b'"price":{"amount":"12.50","currency":"USD"}', b'"price":{"amount":"12.50"}'),
    _with(TYPICAL, b'"price":{"amount":"12.50","currency":"USD"}', b'"price":[]'),
    _with(TYPICAL, b'"category":{', b'"category":null,"x":{'),
    # the document around it
    b"\xef\xbb\xbf" + TYPICAL,
    b" \t\r\n" + TYPICAL + b" \t\r\n",
    TYPICAL + b"\x0c",
    TYPICAL + b"x",
    TYPICAL + TYPICAL,
    TYPICAL[:-1] + b",}",
    TYPICAL[:-1],
    TYPICAL + b"\x00",
    b"[" + TYPICAL + b"]",
    b"",
    b"null",
    TYPICAL.replace(b":", b" : "),
]


@pytest.mark.parametrize("raw", EDGE_CASES, ids=[f"edge-{index}" for index in range(len(EDGE_CASES))])
def test_edge_cases_decode_alike(raw: bytes) -> None:
    assert_decodes_alike(raw)


def test_edge_cases_cover_both_outcomes() -> None:
    fast = sum(decode_typical(raw) is not None for raw in EDGE_CASES)
    invalid = sum(isinstance(outcome_of(decode_event_reference, raw), tuple) for raw in EDGE_CASES)
    assert fast >= 20 and invalid >= 40


def test_payload_limit_comes_first() -> None:
    raw = TYPICAL[:-1] + b',"x":"' + b"a" * 1_048_576 + b'"}'
    assert decode_typical(raw) is None
    assert_decodes_alike(raw)


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_alike(raw: bytes) -> None:
    assert_decodes_alike(raw)


@SETTINGS
@given(json_values)
def test_arbitrary_json_decodes_alike(value: Any) -> None:
    assert_decodes_alike(orjson.dumps(value))


@SETTINGS
@given(mutated_events())
def test_mutated_events_decode_alike(event: dict[str, Any]) -> None:
    assert_decodes_alike(orjson.dumps(event))


@SETTINGS
@given(mutated_events(), st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=3))
def test_corrupted_events_decode_alike(event: dict[str, Any], cut: int, junk: bytes) -> None:
    raw = orjson.dumps(event)
    assert_decodes_alike(raw[:cut])
    assert_decodes_alike(raw[:cut] + junk + raw[cut + len(junk):])
    assert_decodes_alike(raw[:cut] + junk + raw[cut:])


LEAVES = [
    ("event_id",), ("event_type",), ("occurred_at",), ("product", "id"), ("product", "version"), ("product", "title"),
    ("product", "seller", "id"), ("product", "seller", "country"), ("product", "ship_from_country"),
    ("product", "category", "path"), ("product", "category", "id"), ("product", "hs_code"),
    ("product", "price", "amount"), ("product", "price", "currency"),
]
text_values = st.text(max_size=24) | st.text(alphabet=st.characters(codec="utf-8"), max_size=6) | st.sampled_from(
    ["", "ID", "CN", "id", "62", "6205.20", "62.05", "aa-1", "gid://shopify/TaxonomyCategory/aa-1", "A > B", " > ",
     "0", "0.5", "00.5", "USD", "2026-11-29T10:00:00Z", "2026-11-29T10:00:00.123+07:00", "\u0000", "é" * 3]
)
leaf_values = (
    st.none() | st.booleans() | text_values | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.just(7.0) | st.lists(st.integers(-10, 10), max_size=2)
)


@st.composite
def raw_variants(draw: st.DrawFn) -> bytes:
    """The typical event with leaves replaced, and perhaps a duplicate key spliced into the JSON text."""
    event = copy.deepcopy(VALID_EVENT)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        *parents, leaf = draw(st.sampled_from(LEAVES))
        target = event
        for key in parents:
            target = target[key]
        target[leaf] = draw(leaf_values)
    raw = orjson.dumps(event)
    if draw(st.booleans()):
        *_, leaf = draw(st.sampled_from(LEAVES))
        duplicate = b'"' + leaf.encode() + b'":' + orjson.dumps(draw(leaf_values))
        marker = b'"' + leaf.encode() + b'":'
        if marker in raw:
            at = raw.index(marker)
            raw = raw[:at] + duplicate + b"," + raw[at:] if draw(st.booleans()) else (
                raw[:at] + marker + raw[at + len(marker):].replace(b",", b"," + duplicate + b",", 1)
            )
    return raw


@SETTINGS
@given(raw_variants())
def test_variants_and_duplicate_keys_decode_alike(raw: bytes) -> None:
    assert_decodes_alike(raw)


# --- classification ----------------------------------------------------------------------

RULE_POLICIES = {
    "bundled": POLICY,
    "dated": policy_with(effective={"crafts": "2026-12-01", "textile_fashion": "2026-12-01T07:00:00+07:00"}, version="t-dated"),
    "exempt": policy_with(exempt=["S-1", "S-2"], version="t-exempt"),
    "minimum": policy_with(minimum=MIN_PRICE, version="t-minimum"),
    "all": policy_with(effective={"food_beverage": "2026-12-01"}, exempt=["S-1"], minimum=MIN_PRICE, version="t-all"),
}
BOTH_SIGNALS = ["origin_changed_after_block", "category_changed_after_block"]
# Review signals change only what follows a block, so they are checked on streams of their own (below) too.
SIGNAL_POLICIES = {
    "review-flag": policy_with(review={"enabled": True, "signals": BOTH_SIGNALS}, version="t-review-flag"),
    "review-hold": policy_with(review={"enabled": True, "signals": BOTH_SIGNALS, "on_signal": "hold"}, version="t-review-hold"),
    "review-hold-origin": policy_with(
        review={"enabled": True, "signals": ["origin_changed_after_block"], "on_signal": "hold"}, version="t-review-hold-origin",
    ),
    "review-off": policy_with(review={"enabled": False, "signals": BOTH_SIGNALS, "on_signal": "hold"}, version="t-review-off"),
    "review-all": policy_with(
        effective={"food_beverage": "2026-12-01"}, exempt=["S-1"], minimum=MIN_PRICE,
        review={"enabled": True, "signals": BOTH_SIGNALS, "on_signal": "hold"}, version="t-review-all",
    ),
}
STREAM_POLICIES = {**RULE_POLICIES, **SIGNAL_POLICIES}
CATEGORIES = taxonomy()[::97]
DEC_1 = 1_796_083_200.0


def reference_classify(event: ProductEvent, policy: Policy, now: float) -> Decision:
    verdict, _ = judge_afresh(event, policy, now)
    return Decision(
        decision_id(event.event_id, policy.version), event.event_id, event.product_id, event.product_version,
        *verdict, policy.version,
    )


@st.composite
def rule_events(draw: st.DrawFn) -> tuple[ProductEvent, float]:
    category = draw(st.sampled_from(CATEGORIES))
    price = draw(st.none() | st.tuples(st.sampled_from(["0.5", "99.99", "100.00", "250", "1500000"]),
                                        st.sampled_from(["USD", "IDR", "CNY", "EUR"])))
    event = ProductEvent(
        draw(st.sampled_from(["e1", "e2"])), "P-1", draw(st.none() | st.integers(0, 3)),
        draw(st.sampled_from([None, "S-1", "S-2", "S-3"])), draw(st.sampled_from(["ID", "CN", "SG"])),
        draw(st.sampled_from(["ID", "CN"])), category.path, draw(st.sampled_from([None, category.id])),
        draw(st.sampled_from([None, "4901", "6109", "1905"])), *(price or (None, None)), None, None,
    )
    now = draw(st.sampled_from([DEC_1 - 3600, DEC_1, DEC_1 + 3600]))
    return event, now


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(RULE_POLICIES)), st.lists(rule_events(), min_size=1, max_size=12))
def test_classify_with_remembered_verdicts_is_the_reference(name: str, events: list[tuple[ProductEvent, float]]) -> None:
    """Whatever was decided before for the same facts, time, price and seller still count where they should."""
    policy = RULE_POLICIES[name]
    for event, now in events:
        try:
            expected: Any = reference_classify(event, policy, now)
        except InvalidEvent as exc:
            expected = (exc.code, exc.message)
        try:
            got: Any = classify(event, policy, now)
        except InvalidEvent as exc:
            got = (exc.code, exc.message)
        assert got == expected


def test_verdicts_that_depend_on_time_price_or_seller_are_not_remembered() -> None:
    policy = policy_with(effective={"food_beverage": "2026-12-01"}, exempt=["S-1"], minimum=MIN_PRICE)
    base = ProductEvent("e", "P", 1, "S-9", "CN", "CN", SNACKS, None, None, "1.00", "USD", None, None)
    classify(base, policy, DEC_1 - 1)  # a dated cluster
    classify(base._replace(seller_id="S-1", category_path=PHONE), policy, DEC_1)  # an exempt seller
    classify(base._replace(category_path=PHONE), policy, DEC_1)  # the price decides
    assert len(policy.verdicts) == 0
    classify(base._replace(category_path=PHONE, hs_code="4901"), policy, DEC_1)  # HS-exempt: the same for all
    classify(base._replace(seller_country="ID", ship_from_country="ID", category_path=PHONE), policy, DEC_1)
    assert len(policy.verdicts) == 2


def test_decision_id_is_unchanged() -> None:
    """BLAKE2b-128 of event id, unit separator, policy version: consumers drop copies by it."""
    assert decision_id("9f1c-0001", "2026.11.0") == hashlib.blake2b(b"9f1c-0001\x1f2026.11.0", digest_size=16).hexdigest()
    assert decision_id("é\u2028" + ASTRAL, "v1") == hashlib.blake2b(("é\u2028" + ASTRAL + "\x1fv1").encode(), digest_size=16).hexdigest()


# --- state and whole decisions -------------------------------------------------------------


def reference_state_encoding(state: ProductState) -> bytes:
    """Format 2 spelled out with orjson: a JSON array, the format number first, then the fields in this order."""
    facts = state.facts
    return orjson.dumps([
        2, state.decision, facts.product_version, state.cluster, state.cross_border, state.policy_version,
        state.decided_at_ms, list(state.reasons), facts.event_id, facts.seller_id, facts.seller_country,
        facts.ship_from_country, facts.category_path, facts.category_id, facts.hs_code, facts.price_amount,
        facts.price_currency, facts.occurred_at, state.title_digest, list(state.held_signals), state.published_id,
    ])


def version_1_encoding(state: ProductState, decision_id: str, partition: int, title: str | None) -> bytes:
    """How an older worker stored states (a JSON object), which changelogs written before format 2 still hold."""
    return orjson.dumps({
        "decision": state.decision, "cluster": state.cluster, "cross_border": state.cross_border,
        "policy_version": state.policy_version, "decision_id": decision_id, "partition": partition,
        "facts": dict(zip(_V1_FACT_FIELDS, state.facts._replace(title=title))),
    })


optional_text = st.none() | st.text(min_size=1, max_size=20)


@SETTINGS
@given(
    st.builds(ProductEvent, st.text(min_size=1), st.text(min_size=1), st.none() | st.integers(0, 2**63 - 1), optional_text,
              st.sampled_from(["ID", "CN"]), st.sampled_from(["ID", "CN"]), st.text(min_size=1), optional_text,
              optional_text, optional_text, optional_text, optional_text, st.none()),
    st.sampled_from(["block", "allow"]), st.none() | st.sampled_from(["crafts", "textile_fashion"]), st.booleans(),
    st.integers(0, 2**53), st.lists(st.sampled_from(["DOMESTIC_ITEM", "FOREIGN_SELLER", "MATCHED_CATEGORY_PATH"])),
    optional_text, st.sampled_from([(), ("ORIGIN_CHANGED_AFTER_BLOCK",), ("ORIGIN_CHANGED_AFTER_BLOCK", "CATEGORY_CHANGED_AFTER_BLOCK")]),
    st.none() | st.just("cd" * 16),
)
def test_state_encoding_is_format_2_and_reads_format_1(
    facts: ProductEvent, decision: str, cluster: str | None, cross_border: bool, decided_at_ms: int,
    reasons: list[str], title: str | None, held_signals: tuple[str, ...], published_id: str | None,
) -> None:
    state = ProductState(
        decision, cluster, cross_border, "2026.11.0", decided_at_ms, tuple(reasons), facts, title_digest(title), held_signals,
        published_id,
    )
    encoded = state.encode()
    assert encoded == reference_state_encoding(state)
    key = facts.product_id.encode()
    assert ProductState.decode(key, encoded) == state
    # A newer worker reads what an older one wrote: the same state, but for what format 1 did not keep.
    older = ProductState.decode(key, version_1_encoding(state, "ab" * 16, 3, title))
    assert older == state._replace(decided_at_ms=0, reasons=(), held_signals=(), published_id="ab" * 16)
    assert older.decision_id == "ab" * 16, "format 1 stored the decision id"
    # Format 2 as written before published_id (20 elements): the decision id follows from the event and the policy.
    before_published = ProductState.decode(key, orjson.dumps(orjson.loads(encoded)[:-1]))
    assert before_published == state._replace(published_id=None)
    assert before_published.decision_id == decision_id(facts.event_id, "2026.11.0")
    # Format 2 as written before held_signals (19 elements) reads as a product that is not held.
    assert ProductState.decode(key, orjson.dumps(orjson.loads(encoded)[:-2])) == state._replace(
        held_signals=(), published_id=None,
    )


def test_state_format_2_fields_are_unchanged() -> None:
    # Records in changelogs are read by newer workers: fields are only ever added at the end, with a default.
    assert StoredState.__struct_fields__ == (
        "decision", "product_version", "cluster", "cross_border", "policy_version", "decided_at_ms", "reasons",
        "event_id", "seller_id", "seller_country", "ship_from_country", "category_path", "category_id", "hs_code",
        "price_amount", "price_currency", "occurred_at", "title_digest", "held_signals", "published_id",
    )
    # A record without them (written before they existed) is not held, and its decision id follows from its facts.
    assert StoredState.__struct_defaults__ == ((), None)


class _NoFastPath:
    def decide(self, *args: Any) -> None:
        return None


class ReferenceProcessor(Processor):
    """Processor with every event on the reference path."""

    @Processor.policy.setter  # type: ignore[attr-defined,untyped-decorator]
    def policy(self, policy: Policy) -> None:
        self._policy = policy
        self._fast = _NoFastPath()


class CountingProcessor(Processor):
    """Processor that counts the events its fast path decided."""

    fast_decisions = 0

    def process(self, *args: Any) -> Outcome:
        decide = self._fast.decide

        def counted(*inner: Any) -> Any:
            result = decide(*inner)
            self.fast_decisions += result is not None
            return result

        self._fast.decide = counted  # type: ignore[method-assign]
        try:
            return super().process(*args)
        finally:
            del self._fast.decide


def run_both(policy: Policy, messages: list[tuple[bytes | None, bytes | None]], now: float = DEC_1) -> CountingProcessor:
    fast, reference = CountingProcessor(policy, MemoryStateStore()), ReferenceProcessor(policy, MemoryStateStore())
    for offset, (key, value) in enumerate(messages):
        got = fast.process(key, value, "in", offset % 3, offset, now + offset * 0.0005)
        expected = reference.process(key, value, "in", offset % 3, offset, now + offset * 0.0005)
        assert got == expected, (offset, value)
        assert fast.state == reference.state
    return fast


@pytest.mark.parametrize("name", sorted(STREAM_POLICIES))
def test_sample_stream_is_decided_alike(name: str) -> None:
    policy = STREAM_POLICIES[name]
    sample = list(generate(2000, seed=11, malformed_ratio=0.05, products=300))
    messages: list[tuple[bytes | None, bytes | None]] = [*sample, (b"P-0000001", None), (None, None)]  # tombstones
    messages += sample[:500]  # the same again: stale versions
    messages += [(key.replace(b"P-", b"Q-"), value.replace(b'"P-', b'"Q-')) for key, value in sample]  # known kinds
    processor = run_both(policy, messages)
    assert processor.fast_decisions > 3000  # the typical event did take the fast path, whatever the rules


def test_policy_swap_moves_the_fast_path_along() -> None:
    processor = CountingProcessor(load_bundled_policy(), MemoryStateStore())
    raw = orjson.dumps(VALID_EVENT)
    processor.process(b"P-1001", raw, "in", 0, 0, DEC_1)
    processor.process(b"P-1001", raw, "in", 0, 1, DEC_1)
    assert processor.fast_decisions == 2
    swapped = policy_with(exempt=["S-1"], version="t-swapped")
    processor.policy = swapped
    assert processor.policy is swapped
    for offset in (2, 3):
        outcome = processor.process(b"P-1001", raw, "in", 0, offset, DEC_1)
        assert orjson.loads(outcome.value or b"")["policy_version"] == swapped.version
    assert processor.fast_decisions == 4


# Three in a restricted cluster (textile & fashion, food & beverage, crafts), three in none.
SIGNAL_CATEGORIES = [
    *(next(c for c in CATEGORIES if c.id.startswith(prefix)) for prefix in ("aa-1", "fb-2", "ae-2-1")), *CATEGORIES[:3],
]


@st.composite
def message_streams(draw: st.DrawFn, categories: list[Any] = CATEGORIES[:6]) -> list[tuple[bytes | None, bytes | None]]:
    """A few products and categories, versions up and down, sellers, titles, prices, oddities, tombstones."""
    messages: list[tuple[bytes | None, bytes | None]] = []
    for index in range(draw(st.integers(min_value=1, max_value=25))):
        product = draw(st.sampled_from(["P-1", "P-2", "P-\u00e9"]))
        if draw(st.integers(0, 19)) == 0:
            messages.append((product.encode(), None))
            continue
        category = draw(st.sampled_from(categories))
        changes: dict[str, Any] = {
            "product__title": draw(st.sampled_from([..., "Kemeja batik", "Kemeja batik pria"])),
            "event_id": f"e-{index}",
            "product__id": product,
            "product__version": draw(st.none() | st.integers(0, 4)),
            "product__seller": {"country": draw(st.sampled_from(["ID", "CN"]))} | (
                {"id": seller} if (seller := draw(st.sampled_from([None, "S-1", "S-9"]))) else {}),
            "product__ship_from_country": draw(st.sampled_from(["ID", "CN"])),
            "product__category": {"path": category.path} | ({"id": category.id} if draw(st.booleans()) else {}),
            "product__hs_code": draw(st.sampled_from([..., "4901", "6205.20"])),
            "product__price": draw(st.sampled_from([..., {"amount": "5.00", "currency": "USD"},
                                                    {"amount": "500.00", "currency": "USD"}, {"amount": "1", "currency": "EUR"}])),
        }
        if draw(st.integers(0, 9)) == 0:
            changes[draw(st.sampled_from(["extra", "product__extra", "product__version"]))] = draw(leaf_values)
        messages.append((product.encode(), orjson.dumps(make_event(**changes))))
    return messages


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(STREAM_POLICIES)), message_streams())
def test_streams_are_decided_alike(name: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    run_both(STREAM_POLICIES[name], messages)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SIGNAL_POLICIES)), message_streams(SIGNAL_CATEGORIES))
def test_streams_with_review_signals_are_decided_alike(name: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    """Blocked products back domestic, in another category, held or flagged: the fast path hands them over."""
    run_both(SIGNAL_POLICIES[name], messages)


def test_the_signal_streams_do_raise_and_hold() -> None:
    """What the property above covers: a scripted stream in which every signal case occurs, decided alike."""
    restricted, unrestricted = SIGNAL_CATEGORIES[0], SIGNAL_CATEGORIES[3]

    def upsert(index: int, country: str, category: Any, seller: str = "S-5", title: str = "Kemeja") -> tuple[bytes, bytes]:
        return b"P-1", orjson.dumps(make_event(
            event_id=f"e-{index}", product__id="P-1", product__version=index, product__title=title,
            product__seller={"id": seller, "country": country}, product__ship_from_country=country,
            product__category={"path": category.path, "id": category.id}, product__hs_code=...,
        ))

    script = [  # with what the fast path decides under flag: a signal is looked for after a block that the facts lift
        ("CN", restricted),  # first decision: fast
        ("ID", restricted),  # block -> allow: ORIGIN_CHANGED_AFTER_BLOCK, the reference path's
        ("CN", restricted),  # allow -> block: fast
        ("CN", unrestricted),  # block -> allow: CATEGORY_CHANGED_AFTER_BLOCK, the reference path's
        ("CN", restricted),  # fast
        ("ID", unrestricted),  # both signals: the reference path's
        ("ID", unrestricted),  # allow -> allow: fast
        ("CN", restricted),  # fast
        ("ID", restricted, "S-2"),  # block -> allow by another seller: the reference path's, which raises nothing
    ]
    messages: list[tuple[bytes | None, bytes | None]] = [upsert(index, *step) for index, step in enumerate(script, start=1)]
    # Under hold the product is held from the second event on, and every later event goes the reference way.
    expected_fast = {"review-flag": 5, "review-hold": 1, "review-hold-origin": 1, "review-off": 9, "review-all": 1}
    for name, policy in SIGNAL_POLICIES.items():
        assert run_both(policy, messages).fast_decisions == expected_fast[name], name
        records = [orjson.loads(outcome.value or b"") for outcome in _outcomes(policy, messages)]
        assert any(record["review"] for record in records) is (name != "review-off"), (name, records)


def _outcomes(policy: Policy, messages: list[tuple[bytes | None, bytes | None]]) -> list[Outcome]:
    processor = Processor(policy, MemoryStateStore())
    return [processor.process(key, value, "in", 0, offset, DEC_1) for offset, (key, value) in enumerate(messages)]


def test_stored_state_the_fast_path_cannot_read_goes_the_reference_way() -> None:
    processor = CountingProcessor(load_bundled_policy(), MemoryStateStore())
    raw = orjson.dumps(VALID_EVENT)
    processor.process(b"P-1001", raw, "in", 0, 0, DEC_1)
    processor.state[b"P-1001"] = b'{"decision": 5, "facts": {}}'  # not what the fast path expects
    with pytest.raises(KeyError):  # what the reference path did with such a state, before and now
        processor.process(b"P-1001", raw, "in", 0, 1, DEC_1)
    assert processor.fast_decisions == 1


# --- the clock -----------------------------------------------------------------------------


@given(st.lists(st.floats(min_value=0, max_value=4_000_000_000), min_size=1, max_size=20))
def test_repeated_timestamps_format_alike(times: list[float]) -> None:
    def reference(epoch: float) -> str:
        second = int(epoch)
        return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{int((epoch - second) * 1000):03d}Z"

    for epoch in times + times[::-1] + times:
        assert format_timestamp(epoch) == reference(epoch)


def test_an_overridden_product_is_decided_alike_and_always_by_the_reference_path() -> None:
    from worker.kafka.whole_topic import TopicRecord
    from worker.stream.overrides import OverrideBook

    book = OverrideBook()
    document = b'{"decision": "allow", "reason": "appeal", "author": "staff", "created_at": "2026-11-01T00:00:00Z"}'
    book.apply(TopicRecord(0, 0, 0, b"P-0000007", document))
    sample = list(generate(400, seed=3, malformed_ratio=0.0, products=20))
    fast = CountingProcessor(POLICY, MemoryStateStore(), overrides=book)
    reference = ReferenceProcessor(POLICY, MemoryStateStore(), overrides=book)
    overridden = 0
    for offset, (key, value) in enumerate(sample):
        got = fast.process(key, value, "in", 0, offset, DEC_1)
        assert got == reference.process(key, value, "in", 0, offset, DEC_1)
        overridden += got.overridden
        assert got.overridden == (key == b"P-0000007")
    assert overridden == sum(1 for key, _ in sample if key == b"P-0000007") > 0
