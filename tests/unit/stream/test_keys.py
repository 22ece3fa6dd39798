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
from worker.stream.processing import DEAD_LETTER, DECISION, MemoryStateStore, Processor

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
