"""The worker on a real broker: decisions, dead letters, tombstones, ordering, metrics, readiness."""

from __future__ import annotations

import base64
import re
from collections import Counter, defaultdict

import orjson

from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import consume, produce
from tests.integration.prometheus import sample, series, wait_for_metrics
from worker.core import classify, decode_event, load_bundled_policy
from worker.core.errors import ErrorCode
from worker.commands.sample import generate

POLICY = load_bundled_policy()


def test_every_event_gets_one_decision_and_bad_ones_a_dead_letter(worker: WorkerProcess) -> None:
    messages = list(generate(3000, seed=11, malformed_ratio=0.02))
    produce(worker.bootstrap, worker.input_topic, messages)

    valid: dict[str, tuple[bytes, object]] = {}
    invalid: Counter[tuple[bytes, bytes]] = Counter()
    for key, value in messages:
        try:
            decoded = decode_event(value)
        except ValueError:
            invalid[(key, value)] += 1
        else:
            valid[decoded.event_id] = (key, classify(decoded, POLICY))
    assert invalid, "the sample must contain malformed messages"

    decisions = consume(worker.bootstrap, worker.decisions_topic, len(valid))
    dead_letters = consume(worker.bootstrap, worker.dead_letter_topic, sum(invalid.values()))

    by_event = Counter(orjson.loads(record.value)["event_id"] for record in decisions)
    assert set(by_event) == set(valid), worker.tail_log()
    assert max(by_event.values()) == 1, "exactly one decision per valid event"
    for record in decisions:
        body = orjson.loads(record.value)
        key, expected = valid[body["event_id"]]
        assert record.key == expected.product_id.encode() == key
        assert body["decision_id"] == expected.decision_id
        assert body["decision"] == expected.decision
        assert body["cluster"] == expected.cluster
        assert body["cross_border"] == expected.cross_border
        assert body["reasons"] == list(expected.reasons)
        assert body["policy_version"] == POLICY.version
        assert body["source"]["topic"] == worker.input_topic
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["decided_at"])

    received: Counter[tuple[bytes, bytes]] = Counter()
    for record in dead_letters:
        body = orjson.loads(record.value)
        original = base64.b64decode(body["payload_base64"])
        received[(record.key, original)] += 1
        assert body["source"]["topic"] == worker.input_topic
        assert body["source"]["key"] == record.key.decode()
        assert body["error"]["code"] in set(ErrorCode)
        assert body["error"]["message"]
    assert received == invalid, "one dead letter per bad message, payload decoding back to the original bytes"

    # Still consuming after the bad input.
    later = list(generate(50, seed=12, malformed_ratio=0.0))
    produce(worker.bootstrap, worker.input_topic, later)
    again = consume(worker.bootstrap, worker.decisions_topic, len(valid) + 50)
    assert len(again) == len(valid) + 50, worker.tail_log()


def test_tombstone_is_forwarded(worker: WorkerProcess) -> None:
    produce(worker.bootstrap, worker.input_topic, [(b"P-gone", None)])
    tombstones = consume(worker.bootstrap, worker.decisions_topic, 1)
    assert [(r.key, r.value) for r in tombstones] == [(b"P-gone", None)]
    assert sample(worker.metrics(), "compliance_tombstones_total") == 1


def test_order_per_product_is_kept(worker: WorkerProcess) -> None:
    products, updates = 20, 100
    messages = []
    for version in range(1, updates + 1):
        for number in range(products):
            event = {
                "event_id": f"order-{number}-{version}",
                "product": {
                    "id": f"P-{number}", "version": version,
                    "seller": {"country": "CN" if version % 2 else "ID"}, "ship_from_country": "CN" if version % 2 else "ID",
                    "category": {"path": "Apparel & Accessories > Clothing > Dresses"},
                },
            }
            messages.append((f"P-{number}".encode(), orjson.dumps(event)))
    produce(worker.bootstrap, worker.input_topic, messages)
    decisions = consume(worker.bootstrap, worker.decisions_topic, len(messages), timeout=90)
    assert len(decisions) == len(messages), worker.tail_log()

    versions: dict[bytes, list[int]] = defaultdict(list)
    partitions: dict[bytes, set[int]] = defaultdict(set)
    for record in sorted(decisions, key=lambda r: (r.partition, r.offset)):
        body = orjson.loads(record.value)
        versions[record.key].append(body["product_version"])
        partitions[record.key].add(record.partition)
        assert body["decision"] == ("block" if body["product_version"] % 2 else "allow")
    for key, seen in versions.items():
        assert seen == list(range(1, updates + 1)), f"{key!r} out of order"
        assert len(partitions[key]) == 1


def test_metrics_match_what_was_produced(worker: WorkerProcess) -> None:
    messages = list(generate(1000, seed=21, malformed_ratio=0.03))
    produce(worker.bootstrap, worker.input_topic, messages)
    expected_decisions: Counter[tuple[str, str]] = Counter()
    expected_dead: Counter[str] = Counter()
    for _key, value in messages:
        try:
            decision = classify(decode_event(value), POLICY)
        except ValueError as error:
            expected_dead[error.code] += 1  # type: ignore[attr-defined]
        else:
            expected_decisions[(decision.decision, decision.cluster or "none")] += 1
    consume(worker.bootstrap, worker.decisions_topic, sum(expected_decisions.values()))
    consume(worker.bootstrap, worker.dead_letter_topic, sum(expected_dead.values()))

    # The counters move just after the broker acknowledged the output that was read back above.
    handled = sum(expected_decisions.values()) + sum(expected_dead.values())
    text = wait_for_metrics(
        worker.metrics, lambda text: sample(text, "compliance_decision_latency_seconds_count") == handled,
        f"{handled} events counted",
    )
    assert series(text, "compliance_decisions_total") == {
        frozenset({("decision", decision), ("cluster", cluster)}): count
        for (decision, cluster), count in expected_decisions.items()
    }
    # Every code has its series from the start (0 until it happens): alert rules and rate() need it to exist.
    assert series(text, "compliance_dead_letters_total") == {
        frozenset({("code", code)}): expected_dead.get(code, 0) for code in ErrorCode
    }
    assert sample(text, "compliance_policy_info", version=POLICY.version, digest=POLICY.digest[:12]) == 1
    lag = [sample(text, "compliance_consumer_lag", topic=worker.input_topic, partition=str(p)) for p in range(4)]
    assert all(value >= 0 for value in lag)
    assert sample(text, "faust_messages_received_total") >= handled, "Faust's own Prometheus sensors are exported too"


def test_readyz_reports_assignment_and_healthz_is_alive(worker: WorkerProcess) -> None:
    status, body = worker.get("/readyz")
    ready = orjson.loads(body)
    assert status == 200 and ready["ready"] is True
    assert ready["assigned_partitions"] == [0, 1, 2, 3]
    assert ready["broker_reachable"] is True
    status, body = worker.get("/healthz")
    assert status == 200 and orjson.loads(body)["status"] == "ok"
