"""The JSON Schemas: valid draft 2020-12, examples valid, decisions conform, hand-written validation agrees with them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, ValidationError, validators

from tests.unit.conftest import VALID_EVENT, make_event
from worker.core import InvalidEvent, Policy, classify, decode_event, parse_policy
from worker.core.classify import decision_id
from worker.core.clock import utc_now
from worker.core.countries import COUNTRY_CODES
from worker.core.event import MAX_CATEGORY_ID_LENGTH, MAX_ID_LENGTH, MAX_PATH_LENGTH, MAX_SHORT_TEXT, MAX_TITLE_LENGTH
from worker.core.overrides import DECISIONS, MAX_REASON_LENGTH, MAX_SHORT_FIELD, InvalidOverride, parse_override
from worker.commands.sample import generate

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
SCHEMA_FILES = sorted(SCHEMAS.glob("*.schema.json"))


def load_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


def _ecma262(pattern: str) -> str:
    """JSON Schema patterns are ECMA-262, where `$` matches only at the very end; Python's `$` also before a final newline."""
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and re.search(_ecma262(pattern), instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft 2020-12 with the spec's end-of-input meaning of `$` (jsonschema uses Python's re.search as is).
EcmaDraft202012Validator = validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})
EVENT_SCHEMA = load_schema("product-upsert.schema.json")
EVENT_VALIDATOR = EcmaDraft202012Validator(EVENT_SCHEMA)
DECISION_VALIDATOR = EcmaDraft202012Validator(load_schema("decision.schema.json"))


# --- the schemas themselves ---------------------------------------------------------------


def test_all_five_schemas_are_here() -> None:
    assert [path.name for path in SCHEMA_FILES] == [
        "dead-letter.schema.json", "decision.schema.json", "override.schema.json", "policy.schema.json",
        "product-upsert.schema.json",
    ]


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
def test_schema_is_valid_draft_2020_12(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/schemas/{path.name}")
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
def test_schema_examples_validate(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    examples = schema.get("examples", [])
    if path.name != "policy.schema.json":
        assert examples, f"{path.name} has no examples"
    for example in examples:
        assert [error.message for error in EcmaDraft202012Validator(schema).iter_errors(example)] == []


def test_event_schema_examples_decode() -> None:
    for example in EVENT_SCHEMA["examples"]:
        decode_event(orjson.dumps(example))


def test_decision_example_id_is_derived_as_documented() -> None:
    examples = load_schema("decision.schema.json")["examples"]
    assert [example["review"] for example in examples] == [False, True]
    for example in examples:
        assert example["decision_id"] == decision_id(example["event_id"], example["policy_version"])


def test_event_schema_bounds_are_the_decoders() -> None:
    product = EVENT_SCHEMA["properties"]["product"]["properties"]
    assert EVENT_SCHEMA["properties"]["event_id"]["maxLength"] == MAX_ID_LENGTH
    assert EVENT_SCHEMA["properties"]["event_type"]["maxLength"] == MAX_SHORT_TEXT
    assert product["id"]["maxLength"] == product["seller"]["properties"]["id"]["maxLength"] == MAX_ID_LENGTH
    assert product["title"]["maxLength"] == MAX_TITLE_LENGTH
    assert product["category"]["properties"]["path"]["maxLength"] == MAX_PATH_LENGTH
    assert product["category"]["properties"]["id"]["maxLength"] == MAX_CATEGORY_ID_LENGTH
    assert set(EVENT_SCHEMA["$defs"]["country"]["enum"]) == COUNTRY_CODES


# --- decisions ----------------------------------------------------------------------------


def _decisions(policy: Policy) -> Iterator[Any]:
    for _key, value in generate(3000, seed=11, malformed_ratio=0.0):
        yield classify(decode_event(value), policy)
    yield classify(decode_event(orjson.dumps(make_event(product__version=...))), policy)


def test_decision_records_validate_against_the_decision_schema(policy: Policy) -> None:
    seen = set()
    for offset, decision in enumerate(_decisions(policy)):
        for source in ({"topic": "catalog.product-upserts", "partition": offset % 4, "offset": offset}, {"file": "-", "line": offset + 1}):
            record = decision.record(utc_now(), source)
            errors = [f"{'.'.join(map(str, error.path))}: {error.message}" for error in DECISION_VALIDATOR.iter_errors(record)]
            assert errors == [], record
        seen.add((decision.decision, decision.cluster, decision.product_version is None))
    assert {cluster for _, cluster, _ in seen} == {"textile_fashion", "food_beverage", "crafts", None}
    assert {(decision, no_version) for decision, _, no_version in seen} >= {("block", False), ("allow", False), ("block", True)}


def test_decision_of_a_policy_with_a_new_cluster_validates() -> None:
    policy = parse_policy({
        "version": "2027.1.0+beta",
        "cross_border": {"home_countries": ["ID"], "signals": ["ship_from_country"]},
        "clusters": {"electronics_2": {"title": "Electronics"}},
        "category_rules": [{"id": "el", "cluster": "electronics_2"}],
    })
    event = make_event(product__category={"id": "el-4", "path": "Electronics > Communications"})
    record = classify(decode_event(orjson.dumps(event)), policy).record(utc_now(), {"file": "x.jsonl", "line": 1})
    assert record["cluster"] == "electronics_2"
    assert DECISION_VALIDATOR.is_valid(record)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("source", {"topic": "t", "partition": 0, "offset": 1, "file": "f", "line": 1}, id="source-both-forms"),
        pytest.param("source", {"file": "f", "line": 0}, id="source-line-zero"),
        pytest.param("decision", "deny", id="decision-unknown"),
        pytest.param("decision_id", "0" * 31, id="decision-id-short"),
        pytest.param("reasons", [], id="no-reasons"),
        pytest.param("reasons", ["DOMESTIC_ITEM", "DOMESTIC_ITEM"], id="repeated-reason"),
        pytest.param("cluster", "Textile", id="cluster-not-snake-case"),
        pytest.param("decided_at", "2026-11-29T10:00:00Z", id="decided-at-without-millis"),
        pytest.param("review", "false", id="review-a-string"),
        pytest.param("review", True, id="review-without-a-signal"),
        pytest.param("reasons", ["DOMESTIC_ITEM", "MATCHED_CATEGORY_ID", "ORIGIN_CHANGED_AFTER_BLOCK"], id="signal-without-review"),
    ],
)
def test_decision_schema_rejects_broken_records(policy: Policy, field: str, value: Any) -> None:
    record = classify(decode_event(orjson.dumps(VALID_EVENT)), policy).record(utc_now(), {"file": "-", "line": 1})
    assert DECISION_VALIDATOR.is_valid(record)
    record[field] = value
    assert not DECISION_VALIDATOR.is_valid(record)


def test_decision_schema_review_follows_the_signals(policy: Policy) -> None:
    record = classify(decode_event(orjson.dumps(VALID_EVENT)), policy).record(utc_now(), {"file": "-", "line": 1})
    flagged = {**record, "reasons": ["DOMESTIC_ITEM", "MATCHED_CATEGORY_ID", "ORIGIN_CHANGED_AFTER_BLOCK"], "review": True}
    held = {**record, "reasons": ["HELD_FOR_REVIEW", "DOMESTIC_ITEM", "CATEGORY_CHANGED_AFTER_BLOCK"], "review": True}
    written_before_review = {key: value for key, value in record.items() if key != "review"}
    for valid in (record, flagged, held, written_before_review):
        assert [error.message for error in DECISION_VALIDATOR.iter_errors(valid)] == []
    assert not DECISION_VALIDATOR.is_valid({key: value for key, value in flagged.items() if key != "review"})


# --- decoder and event schema agree --------------------------------------------------------

FIELDS = [
    "event_id", "event_type", "occurred_at", "product", "product__id", "product__version", "product__title",
    "product__seller", "product__seller__id", "product__seller__country", "product__ship_from_country",
    "product__category", "product__category__id", "product__category__path", "product__hs_code", "product__price",
    "product__price__amount", "product__price__currency",
]
OTHER_VALUES = [
    ("zero", 0), ("integer", 42), ("negative", -1), ("float", 4.5), ("true", True), ("false", False),
    ("empty-array", []), ("array", ["ID"]), ("empty-object", {}), ("object", {"country": "ID"}),
    ("empty-string", ""), ("string", "text"), ("blank-string", " "),
]
MAX_LENGTHS = [
    ("event_id", MAX_ID_LENGTH), ("event_type", MAX_SHORT_TEXT), ("product__id", MAX_ID_LENGTH),
    ("product__title", MAX_TITLE_LENGTH), ("product__seller__id", MAX_ID_LENGTH),
]
PATH = "Apparel & Accessories > Clothing > Clothing Tops"
# (field, value, valid?) spelled out by hand, on top of the generated mutations
EXPLICIT: list[tuple[str, Any, bool]] = [
    # countries
    *[("product__seller__country", code, True) for code in ("ID", "CN", "US", "GB", "AD", "ZW", "SS", "BQ")],
    *[("product__ship_from_country", code, False) for code in ("XX", "cn", "Cn", "CHN", "C", "UK", "EU", "ID ", " ID", "XK", "ID\n", "ÍD")],
    *[("product__seller__country", code, False) for code in ("xx", "IDN", "", "00", "Z1")],
    # category paths
    ("product__category__path", "Apparel", True),
    ("product__category__path", " > ".join(f"Level {n}" for n in range(16)), True),
    ("product__category__path", " > ".join(f"Level {n}" for n in range(17)), False),
    ("product__category__path", ">".join("ABCDEFGHIJKLMNOP"), True),
    ("product__category__path", ">".join("ABCDEFGHIJKLMNOPQ"), False),
    ("product__category__path", "  Apparel & Accessories>Clothing  ", True),
    ("product__category__path", "Pakaian > Batik — tulis ✓", True),
    ("product__category__path", "A" * MAX_PATH_LENGTH, True),
    ("product__category__path", "A" * (MAX_PATH_LENGTH + 1), False),
    ("product__category__path", "A > B\n", True),
    ("product__category__path", "A >  > B", False),
    ("product__category__path", "A > \t > B", False),
    ("product__category__path", "A > B >", False),
    ("product__category__path", "A > B > ", False),
    ("product__category__path", "> A > B", False),
    ("product__category__path", ">", False),
    ("product__category__path", "A >> B", False),
    # category ids
    *[("product__category__id", value, True) for value in (
        "aa", "aa-1-13", "abc-1", "gid://shopify/TaxonomyCategory/aa-1-13", "gid://shopify/TaxonomyCategory/fb",
        "aa" + "-123456" * 15,
    )],
    *[("product__category__id", value, False) for value in (
        "AA-1", "aa_1", "a", "abcd", "aa-", "aa-1234567", "aa--1", "aa" + "-1" * 16, "gid://shopify/TaxonomyCategory/",
        "gid://shopify/Product/aa-1", "GID://shopify/TaxonomyCategory/aa-1", "aa-1\n", " aa-1", "x" * (MAX_CATEGORY_ID_LENGTH + 1),
    )],
    # HS codes: every allowed shape, and near misses
    *[("product__hs_code", value, True) for value in (
        "62", "6205", "620520", "6205.20", "62052010", "6205.20.10", "6205201010", "6205.20.10.10", "6205.2010", "620520.10",
    )],
    *[("product__hs_code", value, False) for value in (
        "6", "620", "62.05", "6205.", "6205..20", "6205.2", "62-05", "62a", "620520101010", "6205.20.10.10.10",
        " 62", "62\n", "٦٢",
    )],
    # timestamps
    *[("occurred_at", value, True) for value in (
        "2026-11-29T10:00:00Z", "2026-11-29T10:00:00.1Z", "2026-11-29T10:00:00.123456789Z", "2026-11-29T17:00:00+07:00",
        "2026-11-29T10:00:00-03:30",
    )],
    *[("occurred_at", value, False) for value in (
        "2026-11-29 10:00:00Z", "2026-11-29T10:00:00", "2026-11-29T10:00:00.1234567890Z", "2026-11-29T10:00Z",
        "yesterday", "2026-11-29T10:00:00z", "2026-11-29T10:00:00Z\n", 1764410400,
    )],
    # versions
    *[("product__version", value, True) for value in (0, 1, 7, 2**63 - 1, 7.0, 0.0, 1000.0)],
    *[("product__version", value, False) for value in (-1, 2**63, 2**64 - 1, 7.5, -0.5, 1e19, "7", "", [7])],
    # prices
    *[("product__price", value, True) for value in (
        {"amount": "0", "currency": "IDR"}, {"amount": "12.50", "currency": "USD"}, {"amount": "999999999999999.999999", "currency": "CNY"},
        {"amount": "12", "currency": "XXX", "note": "extra fields are ignored"},
    )],
    *[("product__price", value, False) for value in (
        {"amount": "01", "currency": "USD"}, {"amount": "1.", "currency": "USD"}, {"amount": ".5", "currency": "USD"},
        {"amount": "-1", "currency": "USD"}, {"amount": "1e3", "currency": "USD"}, {"amount": 12.5, "currency": "USD"},
        {"amount": "1,000", "currency": "USD"}, {"amount": "1.1234567", "currency": "USD"}, {"amount": "1" * 16, "currency": "USD"},
        {"amount": "12.50", "currency": "usd"}, {"amount": "12.50", "currency": "US"}, {"amount": "12.50", "currency": "USDX"},
        {"amount": "12.50", "currency": 840}, {"amount": "12.50"}, {"currency": "USD"}, {"amount": "12.50\n", "currency": "USD"},
        {"amount": "12.50", "currency": "USD\n"},
    )],
    # unknown fields anywhere are allowed
    ("extra", {"nested": [1, None, {"x": True}]}, True),
    ("product__extra", "ignored", True),
    ("product__seller__rating", 4.5, True),
    ("product__category__name", "Clothing Tops", True),
    # multi-byte and astral characters count as one character each
    ("event_id", "é" * MAX_ID_LENGTH, True),
    ("event_id", "😀" * MAX_ID_LENGTH, True),
    ("event_id", "😀" * (MAX_ID_LENGTH + 1), False),
    ("product__title", "batik " * 333, True),
]


def _corpus() -> list[Any]:
    cases = [pytest.param(example, True, id=f"schema-example-{index}") for index, example in enumerate(EVENT_SCHEMA["examples"])]
    cases.append(pytest.param(VALID_EVENT, True, id="conftest-valid-event"))
    for field in FIELDS:
        name = field.replace("__", ".")
        cases.append(pytest.param(make_event(**{field: ...}), None, id=f"{name}-missing"))
        cases.append(pytest.param(make_event(**{field: None}), None, id=f"{name}-null"))
        for value_name, value in OTHER_VALUES:
            cases.append(pytest.param(make_event(**{field: value}), None, id=f"{name}-{value_name}"))
    for field, max_length in MAX_LENGTHS:
        name = field.replace("__", ".")
        cases.append(pytest.param(make_event(**{field: "x" * max_length}), True, id=f"{name}-longest"))
        cases.append(pytest.param(make_event(**{field: "x" * (max_length + 1)}), False, id=f"{name}-too-long"))
    for index, (field, value, valid) in enumerate(EXPLICIT):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        cases.append(pytest.param(make_event(**{field: value}), valid, id=f"{field.replace('__', '.')}={shown}#{index}"))
    for value_name, value in [("array", [VALID_EVENT]), ("string", "event"), ("number", 1), ("null", None), ("true", True)]:
        cases.append(pytest.param(value, False, id=f"document-{value_name}"))
    return cases


CORPUS = _corpus()


def test_corpus_is_big_and_mixed() -> None:
    valid = [EVENT_VALIDATOR.is_valid(case.values[0]) for case in CORPUS]
    assert len(CORPUS) >= 150
    assert valid.count(True) >= 60 and valid.count(False) >= 200


def _decoder_accepts(document: Any) -> tuple[bool, str]:
    try:
        decode_event(orjson.dumps(document))
    except InvalidEvent as exc:
        return False, f"{exc.code}: {exc.message}"
    return True, "decoded"


@pytest.mark.parametrize(("document", "expected"), CORPUS)
def test_decoder_and_event_schema_agree(document: Any, expected: bool | None) -> None:
    schema_errors = [f"{'.'.join(map(str, error.path))}: {error.message}" for error in EVENT_VALIDATOR.iter_errors(document)]
    decoder_ok, decoder_says = _decoder_accepts(document)
    assert decoder_ok == (not schema_errors), f"decoder: {decoder_says}; schema: {schema_errors}"
    if expected is not None:
        assert decoder_ok == expected, f"decoder: {decoder_says}; schema: {schema_errors}"


def test_every_assigned_country_is_accepted_by_both() -> None:
    for code in sorted(COUNTRY_CODES):
        document = make_event(product__seller__country=code, product__ship_from_country=code)
        assert EVENT_VALIDATOR.is_valid(document), code
        assert decode_event(orjson.dumps(document)).seller_country == code


def test_plain_jsonschema_lets_a_final_newline_through_which_is_why_we_use_ecma_dollar() -> None:
    """jsonschema's `pattern` is Python's re.search, where `$` also matches before a final newline; ECMA-262's does not."""
    document = make_event(product__hs_code="62\n")
    assert Draft202012Validator(EVENT_SCHEMA).is_valid(document)
    assert not EVENT_VALIDATOR.is_valid(document)
    assert not _decoder_accepts(document)[0]


def test_only_the_payload_limit_is_beyond_the_schema() -> None:
    """The 1 MiB message limit is in the schema's description only: the one documented difference."""
    document = make_event(padding="x" * 1_048_576)
    assert EVENT_VALIDATOR.is_valid(document)
    accepted, says = _decoder_accepts(document)
    assert not accepted and says.startswith("PAYLOAD_TOO_LARGE: "), says


def test_integral_float_version_decodes_to_an_integer() -> None:
    """7.0 is the integer 7 to JSON Schema; the decoder agrees and hands classify() an int."""
    event = decode_event(b'{"event_id":"e","product":{"id":"P","version":7.0,"seller":{"country":"ID"},'
                         b'"ship_from_country":"ID","category":{"path":"A"}}}')
    assert event.product_version == 7 and type(event.product_version) is int


# --- overrides: parse_override and the override schema agree -------------------------------

OVERRIDE_SCHEMA = load_schema("override.schema.json")
OVERRIDE_VALIDATOR = EcmaDraft202012Validator(OVERRIDE_SCHEMA)
VALID_OVERRIDE: dict[str, Any] = {
    "decision": "allow", "reason": "Appeal accepted", "reference": "APPEAL-1", "author": "dewi",
    "created_at": "2026-11-29T10:00:00.123Z", "expires_at": "2027-01-01T00:00:00.000Z",
}
# Every character Python's str.strip() removes (parse_override's "blank"), and one that ECMA-262's \s has but it has not.
PYTHON_WHITESPACE = [chr(code) for code in range(0x3001) if chr(code).isspace()]
OVERRIDE_TEXT_LIMITS = [("reason", MAX_REASON_LENGTH), ("reference", MAX_SHORT_FIELD), ("author", MAX_SHORT_FIELD)]
OVERRIDE_EXPLICIT: list[tuple[str, Any, bool]] = [
    ("decision", "block", True),
    *[("decision", value, False) for value in ("deny", "Allow", "BLOCK", "allow ", "", ["allow"])],
    ("reference", None, True),
    ("expires_at", None, True),
    ("reason", "Banding diterima — produksi lokal ✓", True),
    ("reason", "  padded but not blank  ", True),
    ("reason", "\ufeff", True),  # a BOM is not whitespace to Python, so neither to the schema's text class
    ("author", "😀" * MAX_SHORT_FIELD, True),
    ("author", "😀" * (MAX_SHORT_FIELD + 1), False),
    *[(field, value, True) for field in ("created_at", "expires_at") for value in (
        "2026-12-01", "2026-12-01T00:00:00Z", "2026-12-01T00:00:00.1Z", "2026-12-01T00:00:00.123456789Z",
        "2026-12-01T07:00:00+07:00", "2026-12-01T00:00:00-03:30",
    )],
    *[(field, value, False) for field in ("created_at", "expires_at") for value in (
        "2026-12-01T00:00:00", "2026-12-01 00:00:00Z", "2026-12-01T00:00:00z", "2026-12-01t00:00:00Z",
        "2026-12-01T00:00:00.1234567890Z", "2026-12-01T00:00Z", "2026-12-01\n", "2026-12-01T00:00:00Z\n", "20261201",
        "tomorrow", 1796083200, "",
    )],
    ("extra", {"nested": [1, None]}, True),
    ("policy_decision", "block", True),
]


def _override(**changes: Any) -> dict[str, Any]:
    document = dict(VALID_OVERRIDE)
    for name, value in changes.items():
        if value is ...:
            document.pop(name, None)
        else:
            document[name] = value
    return document


def _override_corpus() -> list[Any]:
    cases = [pytest.param(example, True, id=f"schema-example-{index}") for index, example in enumerate(OVERRIDE_SCHEMA["examples"])]
    cases.append(pytest.param(VALID_OVERRIDE, True, id="valid"))
    for field in VALID_OVERRIDE:
        cases.append(pytest.param(_override(**{field: ...}), field in ("reference", "expires_at"), id=f"{field}-missing"))
        cases.append(pytest.param(_override(**{field: None}), field in ("reference", "expires_at"), id=f"{field}-null"))
        for value_name, value in OTHER_VALUES:
            cases.append(pytest.param(_override(**{field: value}), None, id=f"{field}-{value_name}"))
    for field, limit in OVERRIDE_TEXT_LIMITS:
        cases.append(pytest.param(_override(**{field: "x" * limit}), True, id=f"{field}-longest"))
        cases.append(pytest.param(_override(**{field: "x" * (limit + 1)}), False, id=f"{field}-too-long"))
        for char in PYTHON_WHITESPACE:
            cases.append(pytest.param(_override(**{field: char * 3}), False, id=f"{field}-blank-U+{ord(char):04X}"))
            cases.append(pytest.param(_override(**{field: f"{char}x{char}"}), True, id=f"{field}-around-U+{ord(char):04X}"))
    for index, (field, value, valid) in enumerate(OVERRIDE_EXPLICIT):
        cases.append(pytest.param(_override(**{field: value}), valid, id=f"{field}={value!r}#{index}"))
    for value_name, value in [("array", [VALID_OVERRIDE]), ("string", "allow"), ("number", 1), ("null", None)]:
        cases.append(pytest.param(value, False, id=f"document-{value_name}"))
    return cases


OVERRIDE_CORPUS = _override_corpus()


def _parse_override_accepts(document: Any) -> tuple[bool, str]:
    try:
        parse_override(b"P-1", orjson.dumps(document))
    except InvalidOverride as exc:
        return False, exc.message
    return True, "parsed"


def test_override_corpus_is_big_and_mixed() -> None:
    valid = [OVERRIDE_VALIDATOR.is_valid(case.values[0]) for case in OVERRIDE_CORPUS]
    assert len(OVERRIDE_CORPUS) >= 250
    assert valid.count(True) >= 90 and valid.count(False) >= 150


@pytest.mark.parametrize(("document", "expected"), OVERRIDE_CORPUS)
def test_parse_override_and_override_schema_agree(document: Any, expected: bool | None) -> None:
    schema_errors = [f"{'.'.join(map(str, error.path))}: {error.message}" for error in OVERRIDE_VALIDATOR.iter_errors(document)]
    parsed, says = _parse_override_accepts(document)
    assert parsed == (not schema_errors), f"parse_override: {says}; schema: {schema_errors}"
    if expected is not None:
        assert parsed == expected, f"parse_override: {says}; schema: {schema_errors}"


def test_override_schema_bounds_are_parse_overrides() -> None:
    properties = OVERRIDE_SCHEMA["properties"]
    assert properties["reason"]["maxLength"] == MAX_REASON_LENGTH
    assert properties["reference"]["maxLength"] == properties["author"]["maxLength"] == MAX_SHORT_FIELD
    assert properties["decision"]["enum"] == list(DECISIONS)
    assert set(OVERRIDE_SCHEMA["required"]) == {"decision", "reason", "author", "created_at"}


def test_override_schema_text_class_is_pythons_whitespace_exactly() -> None:
    """The schema spells out the characters str.strip() removes: \\s means other characters in ECMA-262 than in
    Python (U+001C-U+001F, U+0085, U+FEFF), so the class is written with escapes both read alike."""
    pattern = OVERRIDE_SCHEMA["$defs"]["text"]["pattern"]
    assert OVERRIDE_SCHEMA["properties"]["reference"]["pattern"] == pattern
    assert re.fullmatch(r"\[\^(?:\\[tnfr]|\\u[0-9a-f]{4}|-| )+\]", pattern), pattern
    blank = {chr(code) for code in range(0x110000) if re.fullmatch(pattern, chr(code)) is None}
    assert blank == {chr(code) for code in range(0x110000) if chr(code).isspace()}


def test_only_impossible_instants_are_beyond_the_override_schema() -> None:
    """Dates that do not exist and offsets past 23:59 fit the pattern; parse_override refuses them (the schema says so)."""
    assert "2026-02-30" in OVERRIDE_SCHEMA["description"]
    for field in ("created_at", "expires_at"):
        for value in ("2026-02-30", "2026-13-01T00:00:00Z", "2026-12-01T25:00:00Z", "2026-12-01T00:00:00+24:00"):
            document = _override(**{field: value})
            assert OVERRIDE_VALIDATOR.is_valid(document)
            parsed, says = _parse_override_accepts(document)
            assert not parsed and says.startswith(f"{field}: "), says


def test_override_schema_examples_parse() -> None:
    for example in OVERRIDE_SCHEMA["examples"]:
        override = parse_override(b"P-1", orjson.dumps(example))
        assert override.document() == {key: value for key, value in example.items()}
