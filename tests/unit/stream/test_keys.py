"""The key is the product id: a valid event under any other key (or none) is a KEY_MISMATCH dead letter, state untouched."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from tests.unit.core.test_fast_path import ReferenceProcessor
from worker.core import load_bundled_policy
from worker.stream.agent import ORIGIN_HEADER, origin
from worker.stream.processing import DEAD_LETTER, DECISION, FORWARD, MemoryStateStore, Processor

SCHEMA = json.loads((Path(__file__).resolve().parents[3] / "schemas" / "dead-letter.schema.json").read_text())
EVENT = orjson.dumps({
    "event_id": "e-1",
    "product": {
        "id": "P-1", "version": 1, "seller": {"country": "CN"}, "ship_from_country": "CN",
        "category": {"path": "Apparel & Accessories > Clothing > Dresses"},
    },
})


def processor(path: str) -> Processor:
    made = ReferenceProcessor if path == "reference" else Processor  # reference: every event off the fast path
    return made(load_bundled_policy(), MemoryStateStore())


PATHS = [pytest.param("fast", id="fast-path"), pytest.param("reference", id="reference-path")]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("key", "message"),
    [
        pytest.param(None, 'the message has no key; its key must be its product.id "P-1"', id="null-key"),
        pytest.param(b"P-2", 'the key "P-2" is not the product.id "P-1"', id="another-product"),
        pytest.param(b"", 'the key "" is not the product.id "P-1"', id="empty-key"),
        pytest.param(b"p-1", 'the key "p-1" is not the product.id "P-1"', id="case-differs"),
        pytest.param(b"\"P-1\"", 'the key "\\"P-1\\"" is not the product.id "P-1"', id="json-quoted-key"),
        pytest.param(b"\xffP-1", 'the key "\ufffdP-1" is not the product.id "P-1"', id="not-utf8"),
    ],
)
def test_a_key_that_is_not_the_product_id_is_a_dead_letter(path: str, key: bytes | None, message: str) -> None:
    worker = processor(path)
    outcome = worker.process(key, EVENT, "in", 3, 9, 1_800_000_000.0)
    assert (outcome.kind, outcome.error_code, outcome.error_message) == (DEAD_LETTER, "KEY_MISMATCH", message)
    assert outcome.key == key
    assert outcome.value is not None
    record = orjson.loads(outcome.value)
    jsonschema.validate(record, SCHEMA)
    assert base64.b64decode(record["payload_base64"]) == EVENT
    assert record["source"] == {"topic": "in", "partition": 3, "offset": 9,
                                "key": None if key is None else key.decode("utf-8", "replace")}
    assert worker.state == {}, "state must not be stored under a product id the key does not route"


@pytest.mark.parametrize("path", PATHS)
def test_the_product_id_as_key_is_decided(path: str) -> None:
    worker = processor(path)
    outcome = worker.process(b"P-1", EVENT, "in", 3, 9, 1_800_000_000.0)
    assert (outcome.kind, outcome.key, outcome.decision) == (DECISION, b"P-1", "block")
    assert set(worker.state) == {b"P-1"}


def test_an_invalid_event_keeps_its_own_code_whatever_its_key() -> None:
    outcome = processor("fast").process(b"P-2", b"{\"product\": 1}", "in", 0, 0, 1_800_000_000.0)
    assert (outcome.kind, outcome.error_code) == (DEAD_LETTER, "SCHEMA_VIOLATION")


# --- KEY_MISMATCH=repartition: the first step routes by product id, the second decides in the state's partition ---


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        pytest.param(b"P-1", EVENT, (FORWARD, b"P-1", EVENT), id="right-key"),
        pytest.param(None, EVENT, (FORWARD, b"P-1", EVENT), id="null-key"),
        pytest.param(b"other", EVENT, (FORWARD, b"P-1", EVENT), id="another-key"),
        pytest.param(b"P-1", EVENT.replace(b'"category"', b'"extra":{"x":[1]},"category"'), (FORWARD, b"P-1", None),
                     id="untypical-but-valid"),
        pytest.param(b"P-1", None, (FORWARD, b"P-1", None), id="tombstone-by-its-key"),
        pytest.param(None, None, (DEAD_LETTER, None, "TOMBSTONE_WITHOUT_KEY"), id="tombstone-without-key"),
        pytest.param(b"k", b"{not json", (DEAD_LETTER, b"k", "INVALID_JSON"), id="not-json"),
        pytest.param(b"k", EVENT.replace(b'"CN"', b'"XX1"', 1), (DEAD_LETTER, b"k", "SCHEMA_VIOLATION"), id="invalid"),
    ],
)
def test_routing_keys_every_event_by_its_product_id(
    key: bytes | None, value: bytes | None, expected: tuple[str, bytes | None, object],
) -> None:
    outcome = processor("fast").route(key, value, "in", 3, 17, 1_800_000_000.0)
    kind, routed_key, detail = expected
    assert (outcome.kind, outcome.key) == (kind, routed_key)
    if kind == FORWARD:
        assert outcome.value == (value if detail is None else detail), "the input's bytes go on unchanged"
    else:
        assert outcome.error_code == detail
        assert orjson.loads(outcome.value or b"")["source"] == {"topic": "in", "partition": 3, "offset": 17, "key": (
            None if key is None else key.decode())}


@pytest.mark.parametrize("path", PATHS)
def test_a_repartitioned_event_keeps_its_state_in_the_partition_it_is_read_from(path: str) -> None:
    worker = processor(path)
    outcome = worker.process(b"P-1", EVENT, "in", 3, 17, 1_800_000_000.0, 1)
    assert outcome.kind == DECISION
    assert orjson.loads(outcome.value or b"")["source"] == {"topic": "in", "partition": 3, "offset": 17}
    assert worker.state.get(b"P-1", 1) is not None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([("traceparent", b"t"), (ORIGIN_HEADER, b"3:17")], (3, 17, [("traceparent", b"t")]), id="named"),
        pytest.param([(ORIGIN_HEADER, b"x:17"), ("a", None)], (1, 9, [(ORIGIN_HEADER, b"x:17"), ("a", None)]),
                     id="unreadable-kept-as-is"),
        pytest.param([], (1, 9, []), id="none"),
    ],
)
def test_the_origin_header_names_the_input_record(
    headers: list[tuple[str, bytes | None]], expected: tuple[int, int, list[tuple[str, bytes | None]]],
) -> None:
    assert origin(headers, 1, 9) == expected
