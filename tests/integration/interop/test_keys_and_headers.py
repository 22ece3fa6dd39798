"""Keys and headers as kcat (librdkafka) sends them: a key that is not the product id is a KEY_MISMATCH dead letter,
trace context and FORWARD_HEADERS travel on to the decision, and a dead letter keeps every header it came with."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import WorkerProcess
from tests.integration.interop.clients import kcat_headers, kcat_read, kcat_send
from tests.integration.prometheus import wait_for_sample

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def upsert(product_id: str, event_id: str) -> str:
    return orjson.dumps({
        "event_id": event_id,
        "product": {"id": product_id, "version": 1, "seller": {"country": "CN"}, "ship_from_country": "CN",
                    "category": {"path": "Apparel & Accessories > Clothing > Dresses"}},
    }).decode()


def test_keys_that_are_not_the_product_id_are_dead_letters_with_their_headers(worker: WorkerProcess) -> None:
    sent = {"traceparent": TRACEPARENT, "x-source": "catalog-7"}
    kcat_send(worker.bootstrap, worker.input_topic, None, upsert("K-1", "e-null"), sent)
    kcat_send(worker.bootstrap, worker.input_topic, "K-other", upsert("K-2", "e-other"), sent)
    kcat_send(worker.bootstrap, worker.input_topic, "K-3", upsert("K-3", "e-right"))
    dead_letters = kcat_read(worker.bootstrap, worker.dead_letter_topic, 2)
    decisions = kcat_read(worker.bootstrap, worker.decisions_topic, 1)
    assert worker.process is not None and worker.process.poll() is None, f"the worker died:\n{worker.tail_log()}"
    by_event = {}
    for envelope in dead_letters:
        body = orjson.loads(envelope["payload"])
        payload = orjson.loads(base64.b64decode(body["payload_base64"]))
        by_event[payload["event_id"]] = (envelope["key"], body["error"], list(kcat_headers(envelope)))
    assert by_event == {
        "e-null": (None, {"code": "KEY_MISMATCH",
                          "message": 'the message has no key; its key must be its product.id "K-1"'},
                   list(sent.items())),
        "e-other": ("K-other", {"code": "KEY_MISMATCH", "message": 'the key "K-other" is not the product.id "K-2"'},
                    list(sent.items())),
    }
    assert [(d["key"], orjson.loads(d["payload"])["event_id"]) for d in decisions] == [("K-3", "e-right")]
    assert wait_for_sample(worker.metrics, "compliance_dead_letters_total", 2, code="KEY_MISMATCH") == 2


def test_trace_context_and_forwarded_headers_travel_to_the_decision(
    kafka: str, topics: dict[str, str], tmp_path: Path,
) -> None:
    worker = WorkerProcess.on(kafka, topics, tmp_path / "worker.log")
    worker.start(FORWARD_HEADERS="X-Request-Id")
    try:
        worker.wait_ready()
        kcat_send(kafka, topics["input"], "H-1", upsert("H-1", "e-h1"), {
            "traceparent": TRACEPARENT, "tracestate": "vendor=1", "x-request-id": "r-42", "x-private": "secret",
        })
        kcat_send(kafka, topics["input"], "H-2", upsert("H-2", "e-h2"))
        decisions = kcat_read(kafka, topics["decisions"], 2)
        by_key = {envelope["key"]: list(kcat_headers(envelope)) for envelope in decisions}
        assert by_key == {
            "H-1": [("traceparent", TRACEPARENT), ("tracestate", "vendor=1"), ("x-request-id", "r-42")],
            "H-2": [],
        }, worker.tail_log()
    finally:
        assert worker.stop() == 0, worker.tail_log()


def versioned(product_id: str, event_id: str, version: int, country: str) -> str:
    body = orjson.loads(upsert(product_id, event_id))
    body["product"].update(version=version, seller={"country": country}, ship_from_country=country)
    return orjson.dumps(body).decode()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_repartition_decides_any_key_and_keeps_each_products_state_together(
    kafka: str, topics: dict[str, str], tmp_path: Path, guarantee: str,
) -> None:
    worker = WorkerProcess.on(kafka, topics, tmp_path / "worker.log")
    worker.start(KEY_MISMATCH="repartition", PROCESSING_GUARANTEE=guarantee)
    try:
        worker.wait_ready()
        # One product under three keys (kcat's partitioner spreads them: null keys at random), one event at a time.
        steps = [
            (None, "r-1", 1, "CN", ("block", None, True)),
            ("R-other", "r-2", 2, "ID", ("allow", "block", True)),
            ("R-1", "r-3", 3, "CN", ("block", "allow", True)),
            ("R-elsewhere", "r-4", 4, "CN", ("block", "block", False)),
        ]
        decided = []
        for count, (key, event_id, version, country, _) in enumerate(steps, 1):
            kcat_send(kafka, topics["input"], key, versioned("R-1", event_id, version, country), {"traceparent": TRACEPARENT})
            decided = kcat_read(kafka, topics["decisions"], count)
            assert len(decided) == count, worker.tail_log()
        kcat_send(kafka, topics["input"], "R-1", None)  # a tombstone, keyed by the product id as ever
        kcat_send(kafka, topics["input"], "R-9", versioned("R-1", "r-5", 5, "CN"))
        kcat_send(kafka, topics["input"], "bad", "{not json", {"traceparent": TRACEPARENT})
        decided = kcat_read(kafka, topics["decisions"], len(steps) + 2)
        inputs = {
            orjson.loads(e["payload"])["event_id"]: (e["partition"], e["offset"])
            for e in kcat_read(kafka, topics["input"], len(steps) + 3) if (e["payload"] or "").startswith('{"')
        }
        bodies = [orjson.loads(d["payload"]) for d in decided if d["payload"] is not None]
        assert [(b["decision"], b["previous_decision"], b["changed"]) for b in bodies] == [
            *(expected for *_, expected in steps), ("block", None, True),  # the tombstone forgot it
        ], worker.tail_log()
        for body in bodies:  # the source is the input record, not the repartition topic's
            assert body["source"] == {"topic": topics["input"], "partition": inputs[body["event_id"]][0],
                                      "offset": inputs[body["event_id"]][1]}
        tombstones = [d for d in decided if d["payload"] is None]
        assert [d["key"] for d in tombstones] == ["R-1"]
        carried = {orjson.loads(d["payload"])["event_id"]: list(kcat_headers(d)) for d in decided if d["payload"]}
        assert carried == {  # trace context travels on; the repartition topic's own header does not
            **{event_id: [("traceparent", TRACEPARENT)] for _, event_id, *_ in steps}, "r-5": [],
        }
        [dead] = kcat_read(kafka, topics["dead_letter"], 1)
        body = orjson.loads(dead["payload"])
        assert body["error"]["code"] == "INVALID_JSON" and body["source"]["topic"] == topics["input"]
        assert (dead["key"], list(kcat_headers(dead))) == ("bad", [("traceparent", TRACEPARENT)]), "as it came in"
        assert wait_for_sample(worker.metrics, "compliance_repartitioned_events_total", 6) == 6
        assert wait_for_sample(worker.metrics, "compliance_dead_letters_total", 1, code="INVALID_JSON") == 1
    finally:
        assert worker.stop() == 0, worker.tail_log()
