"""Black box: drive the worker only through Kafka with kcat, as an upstream service and a delisting consumer would."""

from __future__ import annotations

import shutil
import subprocess
import time

import orjson
import pytest

from tests.integration.conftest import WorkerProcess
from tests.tools import require_binary

KCAT = shutil.which("kcat")


def kcat_produce(bootstrap: str, topic: str, lines: list[str]) -> None:
    """One `key<TAB>value` per line; -Z turns an empty key or value into NULL (a tombstone)."""
    subprocess.run(
        [KCAT, "-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-Z", "-X", "acks=all"],
        input="\n".join(lines) + "\n", text=True, check=True, timeout=60,
    )


def kcat_consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[dict]:
    """Read the whole topic as kcat JSON envelopes until `expected` messages are there."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            [KCAT, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
            capture_output=True, text=True, check=True, timeout=60,
        )
        envelopes = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
        if len(envelopes) >= expected or time.monotonic() > deadline:
            return envelopes
        time.sleep(0.3)


@pytest.fixture(autouse=True)
def _require_kcat() -> None:
    require_binary("kcat", "Debian package kcat; make test installs it")


def test_upstream_and_downstream_through_kcat(worker: WorkerProcess) -> None:
    shirt = {
        "event_id": "kcat-1",
        "product": {
            "id": "P-K1", "version": 3, "seller": {"id": "S-1", "country": "CN"}, "ship_from_country": "CN",
            "category": {"id": "aa-1-13", "path": "Apparel & Accessories > Clothing > Clothing Tops"},
        },
    }
    batik = {
        "event_id": "kcat-2",
        "product": {
            "id": "P-K2", "seller": {"country": "ID"}, "ship_from_country": "ID",
            "category": {"path": "Apparel & Accessories > Clothing > Traditional & Ceremonial Clothing"},
        },
    }
    kcat_produce(worker.bootstrap, worker.input_topic, [
        "P-K1\t" + orjson.dumps(shirt).decode(),
        "P-K2\t" + orjson.dumps(batik).decode(),
        "P-K3\t{not json",
        "P-K1\t",  # tombstone: the product was removed
        "\t",  # a tombstone without a key cannot be forwarded
    ])

    decisions = kcat_consume(worker.bootstrap, worker.decisions_topic, 3)
    assert len(decisions) == 3, worker.tail_log()
    by_key: dict[str, list[object]] = {}
    for envelope in sorted(decisions, key=lambda e: (e["partition"], e["offset"])):
        payload = envelope["payload"]
        by_key.setdefault(envelope["key"], []).append(None if payload is None else orjson.loads(payload))

    shirt_decision, tombstone = by_key["P-K1"]
    assert tombstone is None
    assert shirt_decision["decision"] == "block"
    assert shirt_decision["cluster"] == "textile_fashion"
    assert shirt_decision["product_version"] == 3
    assert shirt_decision["reasons"][0] == "CROSS_BORDER_RESTRICTED_CLUSTER"
    [batik_decision] = by_key["P-K2"]
    assert batik_decision["decision"] == "allow"
    assert batik_decision["reasons"][0] == "DOMESTIC_ITEM"

    dead_letters = kcat_consume(worker.bootstrap, worker.dead_letter_topic, 2)
    codes = sorted(orjson.loads(envelope["payload"])["error"]["code"] for envelope in dead_letters)
    assert codes == ["INVALID_JSON", "TOMBSTONE_WITHOUT_KEY"], worker.tail_log()
