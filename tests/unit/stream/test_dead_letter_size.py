"""Dead letters fit the dead-letter topic: the original bytes whenever they fit, else a record saying what was left out."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import orjson

from worker.core import load_bundled_policy
from worker.stream.processing import DEAD_LETTER, DEAD_LETTER_MAX_BYTES, RECORD_OVERHEAD_BYTES, Processor

SCHEMA = json.loads((Path(__file__).resolve().parents[3] / "schemas" / "dead-letter.schema.json").read_text())
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # the broker's message.max.bytes: the largest batch an input topic takes


def dead_letter(processor: Processor, key: bytes | None, value: bytes) -> tuple[bytes | None, dict[str, object]]:
    outcome = processor.process(key, value, "in", 2, 7, 1_700_000_000.0)
    assert outcome.kind == DEAD_LETTER and outcome.value is not None
    record = orjson.loads(outcome.value)
    jsonschema.validate(record, SCHEMA)
    return outcome.key, record


def test_the_largest_inputs_a_default_topic_accepts_keep_their_bytes() -> None:
    processor = Processor(load_bundled_policy())
    # Worst cases: all value (base64: 4/3), or all key of control characters (escaped 6 bytes each in source.key).
    value = b"\xff" * (KAFKA_DEFAULT_MAX_MESSAGE_BYTES - 100)
    key, record = dead_letter(processor, b"k", value)
    assert base64.b64decode(record["payload_base64"]) == value and "payload_omitted_bytes" not in record
    big_key = b"\x01" * (KAFKA_DEFAULT_MAX_MESSAGE_BYTES - 100)
    key, record = dead_letter(processor, big_key, b"[1]")
    assert key == big_key and base64.b64decode(record["payload_base64"]) == b"[1]"
    assert len(key) + len(orjson.dumps(record)) + RECORD_OVERHEAD_BYTES <= DEAD_LETTER_MAX_BYTES


def test_a_dead_letter_too_large_for_its_topic_omits_the_payload_and_says_so() -> None:
    limit = 1_048_588  # an existing dead-letter topic left at Kafka's default
    processor = Processor(load_bundled_policy(), dead_letter_max_bytes=limit)
    fits = b"{" * 700_000
    _, record = dead_letter(processor, b"P-1", fits)
    assert base64.b64decode(record["payload_base64"]) == fits
    value = b"{" * 900_000  # 1.2 MB in base64
    key, record = dead_letter(processor, b"P-1", value)
    assert record["payload_base64"] == "" and record["payload_omitted_bytes"] == len(value)
    assert record["error"]["code"] == "INVALID_JSON" and record["source"]["offset"] == 7 and key == b"P-1"
    long_key = b"\x01" * 600_000  # escaped 6x in source.key: cut there; still the record key
    key, record = dead_letter(processor, long_key, b"[]")
    assert record["payload_omitted_bytes"] == 2 and len(record["source"]["key"]) == 1000 and key == long_key
    huge_key = b"k" * limit  # (from an input topic with a larger limit) not even the key fits: left out too
    key, record = dead_letter(processor, huge_key, b"[]")
    assert key is None and record["source"]["key"] == "k" * 1000
    for key, value in ((b"P-1", value), (long_key, b"[]"), (huge_key, b"[]")):
        outcome = processor.process(key, value, "in", 2, 7, 0.0)
        assert len(outcome.key or b"") + len(outcome.value or b"") + RECORD_OVERHEAD_BYTES <= limit
