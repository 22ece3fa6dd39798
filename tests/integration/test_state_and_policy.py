"""Per-product state and the policy lifecycle on a real broker, with real worker processes.

Transitions (previous_decision, changed), stale versions, tombstones, state recovered after a
restart, the policy topic read at start and followed live (valid, invalid, reused versions), two
workers in one group, and re-screening of known products (only flips published), timed.

Every test has its own input, decisions, dead-letter and policy topics. `RESCREEN_PRODUCTS`
(default 20,000) sets the size of `test_rescreen_at_scale`; its figures are printed (`-s`) and
recorded as junit properties (`record_property`).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from jsonschema import Draft202012Validator

from tests.integration.conftest import ROOT, WorkerProcess
from tests.integration.kafka import Record, produce
from tests.integration.prometheus import sample, series
from tests.integration.test_policy_publish import publish
from worker.core import InvalidPolicy, Policy, classify, decode_event, load_bundled_policy
from worker.core.classify import decision_id
from worker.core.policy import BUNDLED_POLICY, parse_policy_bytes

OLD = load_bundled_policy()
BUNDLED_TEXT = resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_text(encoding="utf-8")
DECISION_SCHEMA = Draft202012Validator(orjson.loads((ROOT / "schemas" / "decision.schema.json").read_bytes()))

DRESS = "Apparel & Accessories > Clothing > Dresses"
SNACKS = "Food, Beverages & Tobacco > Food Items > Snack Foods"
WAIT = 90.0  # seconds: a deadline for anything the worker must do (the machine may be busy)


# --- events, policies ------------------------------------------------------------------------------------------


def upsert(
    product_id: str, version: int | None, country: str, path: str = DRESS, event_id: str | None = None
) -> tuple[bytes, bytes]:
    """A product-upsert message: seller and ship-from both `country` (ID: domestic, else cross-border)."""
    body = {
        "event_id": event_id or f"{product_id}@{version}-{uuid.uuid4().hex[:8]}",
        "product": {
            "id": product_id, "version": version, "seller": {"country": country}, "ship_from_country": country,
            "category": {"path": path},
        },
    }
    return product_id.encode(), orjson.dumps(body)


def event_id_of(message: tuple[bytes, bytes]) -> str:
    return orjson.loads(message[1])["event_id"]


def policy_text(version: str, *, dresses_restricted: bool = True, food_restricted: bool = True) -> str:
    """The bundled policy file under another version; optionally Apparel & Accessories and/or food unrestricted."""
    replacements = [('version: "2026.11.0"', f'version: "{version}"')]
    if not dresses_restricted:
        replacements.append((
            '{id: aa, path: "Apparel & Accessories", cluster: textile_fashion}',
            '{id: aa, path: "Apparel & Accessories", cluster: null}',
        ))
    if not food_restricted:
        replacements.append((
            '{id: fb-2, path: "Food, Beverages & Tobacco > Food Items", cluster: food_beverage}',
            '{id: fb-2, path: "Food, Beverages & Tobacco > Food Items", cluster: null}',
        ))
    text = BUNDLED_TEXT
    for old, new in replacements:
        assert text.count(old) == 1, f"the bundled policy changed: {old!r} is not in it exactly once"
        text = text.replace(old, new)
    return text


def write_policy(tmp_path: Path, version: str, **changes: bool) -> tuple[Path, Policy]:
    path = tmp_path / f"policy-{version}.yaml"
    path.write_text(policy_text(version, **changes), encoding="utf-8")
    return path, parse_policy_bytes(path.read_bytes())


def new_version() -> str:
    return f"2026.12.0+it{uuid.uuid4().hex[:8]}"


def publish_policy(bootstrap: str, path: Path, topic: str) -> None:
    result = publish(bootstrap, path, topic)
    assert result.returncode == 0, f"policy publish failed ({result.returncode}): {result.stderr}"


def produce_raw(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    """One record straight onto a topic with aiokafka (no validation on the way)."""

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=key)
        finally:
            await producer.stop()

    asyncio.run(run())


# --- reading topics --------------------------------------------------------------------------------------------


class Decoded:
    """A record of the decisions topic with its JSON body (None for a tombstone)."""

    __slots__ = ("record", "body")

    def __init__(self, record: Record, *, json: bool = True) -> None:
        self.record = record
        self.body: dict[str, Any] | None = None if record.value is None or not json else orjson.loads(record.value)

    @property
    def is_rescreen(self) -> bool:
        return self.body is not None and self.body["reasons"][0] == "POLICY_CHANGE"

    def __repr__(self) -> str:
        return f"Decoded({self.record.key!r}, {self.body!r})"


def read_until(
    bootstrap: str, topic: str, done: Callable[[list[Decoded]], bool], *, timeout: float = WAIT, what: str = "",
    log: Callable[[], str] = lambda: "",
) -> list[Decoded]:
    """Read `topic` from the beginning until `done(records)` holds; fail after `timeout` seconds."""

    async def run() -> tuple[bool, list[Decoded]]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        )
        await consumer.start()
        records: list[Decoded] = []
        try:
            deadline = time.monotonic() + timeout
            if done(records):
                return True, records
            while time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                fresh = [
                    Decoded(Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp))
                    for batch in batches.values() for m in batch
                ]
                if fresh:
                    records.extend(fresh)
                    if done(records):
                        return True, records
            return False, records
        finally:
            await consumer.stop()

    ok, records = asyncio.run(run())
    if not ok:
        tail = "\n".join(repr(r) for r in records[-10:])
        pytest.fail(
            f"{topic}: not {what or 'done'} within {timeout}s ({len(records)} records; last ones:\n{tail})\n"
            f"worker log:\n{log()}", pytrace=False,
        )
    return records


def read_to_end(bootstrap: str, topic: str, timeout: float = WAIT, *, json: bool = True) -> list[Decoded]:
    """Everything on `topic` up to its end offsets as of now (values parsed as JSON unless `json` is false)."""

    async def run() -> list[Decoded]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()  # noqa: SLF001 - first look at a topic
                partitions = consumer.partitions_for_topic(topic) or set()
            assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            records: list[Decoded] = []
            deadline = time.monotonic() + timeout
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                assert time.monotonic() < deadline, f"{topic} not read to its end within {timeout}s"
                batches = await consumer.getmany(timeout_ms=200)
                records.extend(
                    Decoded(Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp), json=json)
                    for tp, batch in batches.items() for m in batch if m.offset < ends[tp]
                )
            return records
        finally:
            await consumer.stop()

    return asyncio.run(run())


def by_event(records: list[Decoded]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for decoded in records:
        if decoded.body is not None and not decoded.is_rescreen:
            found[decoded.body["event_id"]].append(decoded.body)
    return found


def rescreen_bodies(records: list[Decoded]) -> list[dict[str, Any]]:
    """The bodies of the re-screen decisions (first reason POLICY_CHANGE) among `records`."""
    return [r.body for r in records if r.body is not None and r.is_rescreen]


def has_events(event_ids: list[str]) -> Callable[[list[Decoded]], bool]:
    """A `read_until` condition: a (non re-screen) decision for every one of `event_ids` has been read."""
    missing = set(event_ids)
    seen = 0

    def done(records: list[Decoded]) -> bool:
        nonlocal seen
        for decoded in records[seen:]:
            if decoded.body is not None and not decoded.is_rescreen:
                missing.discard(decoded.body["event_id"])
        seen = len(records)
        return not missing

    return done


def decisions_for(worker: WorkerProcess, messages: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """The decision of each message (in order), waiting for all of them; each exactly once and schema-valid."""
    ids = [event_id_of(m) for m in messages]
    records = read_until(
        worker.bootstrap, worker.decisions_topic, has_events(ids), what=f"decided: {ids}", log=worker.tail_log,
    )
    found = by_event(records)
    result = []
    for event_id in ids:
        assert len(found[event_id]) == 1, f"{event_id}: {found[event_id]}"
        DECISION_SCHEMA.validate(found[event_id][0])
        result.append(found[event_id][0])
    return result


# --- workers, metrics, logs ------------------------------------------------------------------------------------


def wait_for(check: Callable[[], Any], what: str, log: Callable[[], str] = lambda: "", timeout: float = WAIT) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"not {what} within {timeout}s (last: {last!r}); log:\n{log()}", pytrace=False)


def policy_in_force(worker: WorkerProcess, policy: Policy) -> bool:
    """compliance_policy_info has exactly one series, this policy's, at 1 (the policy before it is gone)."""
    wanted = {frozenset({("version", policy.version), ("digest", policy.digest[:12])}): 1.0}
    return series(worker.metrics(), "compliance_policy_info") == wanted


def log_events(worker: WorkerProcess) -> list[dict[str, Any]]:
    entries = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def rescreened(worker: WorkerProcess) -> tuple[float, float]:
    text = worker.metrics()
    return (
        sample(text, "compliance_rescreened_products_total", result="changed"),
        sample(text, "compliance_rescreened_products_total", result="unchanged"),
    )


def rescreen_finished(worker: WorkerProcess, policy: Policy) -> dict[str, Any] | None:
    finished = [
        entry for entry in log_events(worker)
        if entry.get("event") == "rescreen_finished" and entry.get("policy_version") == policy.version
    ]
    return finished[-1] if finished else None


# --- 1, 2: transitions, stale versions, tombstones ------------------------------------------------------------


def test_transitions_and_stale_version_one_event_at_a_time(start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker()
    steps = [  # (version, country) -> (decision, previous_decision, changed, first reason)
        ((1, "CN"), ("block", None, True, "CROSS_BORDER_RESTRICTED_CLUSTER")),
        ((2, "ID"), ("allow", "block", True, "DOMESTIC_ITEM")),
        ((3, "CN"), ("block", "allow", True, "CROSS_BORDER_RESTRICTED_CLUSTER")),
        ((2, "ID"), ("block", "block", False, "STALE_VERSION")),  # older than 3: repeats what is in force
        ((4, "ID"), ("allow", "block", True, "DOMESTIC_ITEM")),  # the stale event did not overwrite the state
        ((4, "ID"), ("allow", "allow", False, "DOMESTIC_ITEM")),  # same version again: decided, not stale, unchanged
    ]
    for (version, country), (decision, previous, changed, reason) in steps:
        message = upsert("P-steps", version, country)
        produce(worker.bootstrap, worker.input_topic, [message])
        [body] = decisions_for(worker, [message])  # each step waits for its decision: state across batches
        got = (
            body["product_version"], body["decision"], body["previous_decision"], body["changed"], body["reasons"][0]
        )
        assert got == (version, decision, previous, changed, reason), worker.tail_log()
        assert body["policy_version"] == OLD.version
        if reason == "STALE_VERSION":
            assert body["reasons"] == ["STALE_VERSION"]
            # cluster and cross_border are those of the decision in force
            assert body["cluster"] == "textile_fashion" and body["cross_border"] is True
            assert body["decision_id"] == decision_id(body["event_id"], OLD.version)


def test_transitions_and_stale_version_in_one_batch(start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker()
    sequence = [(1, "CN"), (2, "ID"), (3, "CN"), (2, "ID"), (4, "ID")]
    messages = [upsert("P-batch", version, country) for version, country in sequence]
    produce(worker.bootstrap, worker.input_topic, messages)  # all at once: state read back within one batch
    bodies = decisions_for(worker, messages)
    assert [(b["decision"], b["previous_decision"], b["changed"], b["reasons"][0]) for b in bodies] == [
        ("block", None, True, "CROSS_BORDER_RESTRICTED_CLUSTER"),
        ("allow", "block", True, "DOMESTIC_ITEM"),
        ("block", "allow", True, "CROSS_BORDER_RESTRICTED_CLUSTER"),
        ("block", "block", False, "STALE_VERSION"),
        ("allow", "block", True, "DOMESTIC_ITEM"),
    ], worker.tail_log()
    assert bodies[3]["reasons"] == ["STALE_VERSION"]


def test_tombstone_clears_the_products_state(start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker()
    first = [upsert("P-gone", 5, "CN"), upsert("Q-gone", 5, "CN")]
    produce(worker.bootstrap, worker.input_topic, first)
    assert [b["previous_decision"] for b in decisions_for(worker, first)] == [None, None]

    produce(worker.bootstrap, worker.input_topic, [(b"P-gone", None), (b"Q-gone", None)])
    read_until(
        worker.bootstrap, worker.decisions_topic,
        lambda records: {r.record.key for r in records if r.body is None} == {b"P-gone", b"Q-gone"},
        what="forwarding both tombstones", log=worker.tail_log,
    )

    # P: the same decision as before the tombstone, yet changed (nothing is known of P any more).
    # Q: a lower version than the one decided before the tombstone is not stale: the version was forgotten too.
    after = [upsert("P-gone", 6, "CN"), upsert("Q-gone", 2, "ID")]
    produce(worker.bootstrap, worker.input_topic, after)
    bodies = decisions_for(worker, after)
    assert [(b["decision"], b["previous_decision"], b["changed"], b["reasons"][0]) for b in bodies] == [
        ("block", None, True, "CROSS_BORDER_RESTRICTED_CLUSTER"),
        ("allow", None, True, "DOMESTIC_ITEM"),
    ], worker.tail_log()


# --- 3: a policy published while events flow ------------------------------------------------------------------


class Feeder(threading.Thread):
    """Produces events for new products, a small batch at a time, until stopped (errors re-raised by `finish`)."""

    def __init__(self, bootstrap: str, topic: str, make: Callable[[int], tuple[bytes, bytes]]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.make = bootstrap, topic, make
        self.sent: list[tuple[bytes, bytes]] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                batch = [self.make(len(self.sent) + n) for n in range(10)]
                produce(self.bootstrap, self.topic, batch)  # a producer per batch: ~10 events per round trip
                self.sent.extend(batch)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            self.error = error

    def finish(self) -> list[tuple[bytes, bytes]]:
        self.stopping.set()
        self.join(60)
        assert not self.is_alive(), "the feeder did not stop"
        if self.error is not None:
            raise self.error
        return self.sent


def test_policy_published_while_events_flow_rescreens_and_publishes_only_flips(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    worker = start_worker()
    path, new = write_policy(tmp_path, new_version(), dresses_restricted=False)
    known = (
        [upsert(f"XB-DRESS-{n}", 1, "CN") for n in range(80)]  # blocked now, allowed under the new policy: flip
        + [upsert(f"LOCAL-DRESS-{n}", 1, "ID") for n in range(60)]  # allowed under both
        + [upsert(f"XB-SNACK-{n}", 1, "CN", SNACKS) for n in range(60)]  # blocked under both
    )
    expected = {event_id_of(m): (classify(decode_event(m[1]), OLD), classify(decode_event(m[1]), new)) for m in known}
    flips = {e for e, (before, after) in expected.items() if before.decision != after.decision}
    assert len(flips) == 80 and all(e.startswith("XB-DRESS-") for e in flips)

    produce(worker.bootstrap, worker.input_topic, known)
    for body in decisions_for(worker, known):
        assert (body["decision"], body["policy_version"]) == (expected[body["event_id"]][0].decision, OLD.version)

    feeder = Feeder(worker.bootstrap, worker.input_topic, lambda n: upsert(f"FLOW-DRESS-{n}", 1, "CN"))
    feeder.start()
    try:
        read_until(  # events are flowing before the policy is published
            worker.bootstrap, worker.decisions_topic,
            lambda records: sum(1 for r in records if r.record.key and r.record.key.startswith(b"FLOW-")) >= 20,
            what="deciding the flowing events", log=worker.tail_log,
        )
        published_at = time.time()
        publish_policy(worker.bootstrap, path, policy_topic)
        wait_for(lambda: policy_in_force(worker, new), f"policy {new.version} in force", worker.tail_log)
        in_force_seen = time.time()
        flowing_before = len(feeder.sent)
        wait_for(lambda: len(feeder.sent) >= flowing_before + 20, "20 more flowing events after the switch")
    finally:
        flowing = feeder.finish()

    # New products after the switch is visible: decided under the new policy, allowed.
    later = [upsert(f"NEW-DRESS-{n}", 1, "CN") for n in range(30)]
    produce(worker.bootstrap, worker.input_topic, later)
    for body in decisions_for(worker, later):
        assert (body["decision"], body["policy_version"], body["reasons"][0]) == (
            "allow", new.version, "NOT_RESTRICTED_CATEGORY"
        ), worker.tail_log()
        assert (body["previous_decision"], body["changed"]) == (None, True)

    # Every flowing event decided; those decided under the old policy (blocked) must flip by re-screening.
    live = decisions_for(worker, flowing)
    flowing_old = {b["product_id"] for b in live if b["policy_version"] == OLD.version}
    for body in live:
        wanted = ("block", OLD.version) if body["product_id"] in flowing_old else ("allow", new.version)
        assert (body["decision"], body["policy_version"]) == wanted
    assert len(flowing_old) < len(live), "some flowing events must be decided under the new policy"

    expected_changed = len(flips) + len(flowing_old)
    expected_unchanged = len(known) - len(flips)
    wait_for(
        lambda: rescreened(worker) == (expected_changed, expected_unchanged),
        f"re-screened: {expected_changed} changed, {expected_unchanged} unchanged", worker.tail_log,
    )
    text = worker.metrics()
    assert sample(text, "compliance_rescreen_pending_products") == 0
    assert series(text, "compliance_policy_info") == {
        frozenset({("version", new.version), ("digest", new.digest[:12])}): 1.0
    }, "the new policy's series alone: the old one is gone"
    assert sample(text, "compliance_policy_rejected_total", reason="invalid") == 0

    records = read_to_end(worker.bootstrap, worker.decisions_topic)
    rescreens = [r for r in records if r.is_rescreen]
    per_product = Counter(body["product_id"] for body in rescreen_bodies(rescreens))
    assert max(per_product.values()) == 1, "one re-screen decision per flipped product"
    assert set(per_product) == {f"XB-DRESS-{n}" for n in range(80)} | flowing_old, (
        "re-screen decisions for exactly the products whose outcome flipped"
    )
    messages = dict(known + flowing)
    for decoded in rescreens:
        body = decoded.body
        assert body is not None
        DECISION_SCHEMA.validate(body)
        original = decode_event(messages[body["product_id"].encode()])
        after = classify(original, new)
        assert decoded.record.key == body["product_id"].encode()
        assert body["reasons"] == ["POLICY_CHANGE", *after.reasons]
        assert (body["decision"], body["cluster"], body["previous_decision"], body["changed"]) == (
            "allow", None, "block", True
        )
        assert body["policy_version"] == new.version
        assert (body["event_id"], body["product_version"]) == (original.event_id, original.product_version)
        assert body["decision_id"] == decision_id(body["event_id"], new.version)
        assert body["source"] == {"rescreen": {"from_policy_version": OLD.version, "to_policy_version": new.version}}

    [policy_record] = read_to_end(worker.bootstrap, policy_topic, json=False)
    last_flip_ms = max(r.record.timestamp_ms for r in rescreens)
    seconds = (last_flip_ms - policy_record.record.timestamp_ms) / 1000
    finished = rescreen_finished(worker, new)
    assert finished is not None and finished["changed"] == expected_changed, worker.tail_log()
    print(
        f"\nre-screen while events flow: {len(known) + len(flowing_old)} known products, {expected_changed} flips "
        f"published; policy record -> last POLICY_CHANGE decision {seconds:.3f}s (publish command started "
        f"{policy_record.record.timestamp_ms / 1000 - published_at:.3f}s before the record; metric showed the new "
        f"policy {in_force_seen - published_at:.3f}s after the command started); worker's own pass: "
        f"{finished['seconds']}s; {len(flowing)} events flowed, {len(flowing_old)} of them decided under the old policy"
    )
    record_property("rescreen_seconds_policy_record_to_last_flip", round(seconds, 3))
    record_property("rescreen_pass_seconds", finished["seconds"])
    record_property("rescreen_flips", expected_changed)


# --- 4: an invalid policy document ----------------------------------------------------------------------------


def invalid_document(version: str) -> bytes:
    """The bundled policy under `version`, with a rule naming a cluster it does not declare."""
    document = policy_text(version).replace(
        "category_rules:\n", 'category_rules:\n  - {id: el, path: "Electronics", cluster: electronics}\n', 1
    ).encode()
    with pytest.raises(InvalidPolicy, match="unknown cluster 'electronics'"):
        parse_policy_bytes(document)
    return document


def test_invalid_policy_on_the_topic_is_rejected_and_the_old_one_stays(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path,
) -> None:
    worker = start_worker()
    # The policy in force before the invalid document: the bundled rules under a version of this test. Seeing it in
    # force also shows the worker follows the topic live (see the start-up test below for documents published earlier).
    path, old = write_policy(tmp_path, new_version())
    publish_policy(worker.bootstrap, path, policy_topic)
    wait_for(lambda: policy_in_force(worker, old), f"policy {old.version} in force", worker.tail_log)
    before = [upsert("P-before", 1, "CN")]
    produce(worker.bootstrap, worker.input_topic, before)
    assert decisions_for(worker, before)[0]["policy_version"] == old.version

    version = new_version()
    produce_raw(worker.bootstrap, policy_topic, version.encode(), invalid_document(version))  # bypasses the CLI
    wait_for(
        lambda: sample(worker.metrics(), "compliance_policy_rejected_total", reason="invalid") == 1,
        "counting the invalid policy", worker.tail_log,
    )
    assert policy_in_force(worker, old)
    errors = [e for e in log_events(worker) if e.get("event") == "policy_rejected"]
    assert len(errors) == 1, worker.tail_log()
    [error] = errors
    assert (error["level"], error["logger"], error["reason"]) == ("error", "worker.policy", "invalid")
    assert error["source"] == f"{policy_topic}[0]@1"
    assert error["message"].startswith(f"policy rejected, {old.version} stays in force: {policy_topic}[0]@1: ")
    assert "category_rules[0].cluster: unknown cluster 'electronics'" in error["message"], error["message"]

    after = [upsert("P-after", 1, "CN"), upsert("P-before", 2, "ID")]
    produce(worker.bootstrap, worker.input_topic, after)
    assert [(b["decision"], b["policy_version"]) for b in decisions_for(worker, after)] == [
        ("block", old.version), ("allow", old.version)
    ]
    assert not [r for r in read_to_end(worker.bootstrap, worker.decisions_topic) if r.is_rescreen]

    # Still following the topic: a valid document after the invalid one is put in force.
    path, valid = write_policy(tmp_path, new_version(), dresses_restricted=False)
    publish_policy(worker.bootstrap, path, policy_topic)
    wait_for(lambda: policy_in_force(worker, valid), f"policy {valid.version} in force", worker.tail_log)
    assert sample(worker.metrics(), "compliance_policy_rejected_total", reason="invalid") == 1


def test_invalid_policy_published_while_the_worker_starts_is_reported(
    start_worker: Callable[..., WorkerProcess], policy_topic: str,
) -> None:
    worker = start_worker(ready=False)
    # The start line is logged right after prepare() has read the policy topic, before the app starts.
    wait_for(
        lambda: any(e.get("event") == "starting" for e in log_events(worker)), "logging the start line",
        worker.tail_log, timeout=60,
    )
    version = new_version()
    produce_raw(worker.bootstrap, policy_topic, version.encode(), invalid_document(version))
    worker.wait_ready()
    assert not [e for e in log_events(worker) if e.get("event") == "policy_ignored"], "published after prepare()"
    wait_for(
        lambda: sample(worker.metrics(), "compliance_policy_rejected_total", reason="invalid") == 1,
        "counting the invalid policy", worker.tail_log, timeout=10,
    )
    assert [e["reason"] for e in log_events(worker) if e.get("event") == "policy_rejected"] == ["invalid"]


# --- 5: two workers in one group ------------------------------------------------------------------------------


def assignments(workers: list[WorkerProcess]) -> list[list[int]] | None:
    """Each worker's input partitions once all are ready and settled and together own every partition exactly once."""
    found = []
    for worker in workers:
        status, body = worker.get("/readyz")
        answer = orjson.loads(body) if status == 200 else None
        if answer is None or answer["rebalancing"] or answer["recovering"]:
            return None
        found.append(answer["assigned_partitions"])
    every = sorted(p for partitions in found for p in partitions)
    return found if every == [0, 1, 2, 3] and all(found) else None


def test_two_workers_in_one_group_both_move_to_a_new_policy(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path,
) -> None:
    first = start_worker("worker-1")
    second = start_worker("worker-2")
    assert first.web_port != second.web_port and first.app_id == second.app_id
    log = lambda: f"worker-1:\n{first.tail_log(30)}\nworker-2:\n{second.tail_log(30)}"  # noqa: E731
    owned = wait_for(lambda: assignments([first, second]), "both workers owning input partitions", log)

    known = [upsert(f"XB-DRESS-{n}", 1, "CN") for n in range(100)] + [upsert(f"LOCAL-{n}", 1, "ID") for n in range(40)]
    produce(first.bootstrap, first.input_topic, known)
    seeded = decisions_for(first, known)
    assert {b["policy_version"] for b in seeded} == {OLD.version}
    assert {b["source"]["partition"] for b in seeded} == {0, 1, 2, 3}

    path, new = write_policy(tmp_path, new_version(), dresses_restricted=False)
    publish_policy(first.bootstrap, path, policy_topic)
    for worker in (first, second):
        wait_for(lambda: policy_in_force(worker, new), f"policy {new.version} in force on {worker.web_port}", log)

    # Each known product is re-screened once, by the worker owning its partition.
    wait_for(
        lambda: tuple(map(sum, zip(rescreened(first), rescreened(second)))) == (100, 40),
        "100 flips and 40 unchanged over both workers", log,
    )
    rescreens = rescreen_bodies(read_to_end(first.bootstrap, first.decisions_topic))
    assert sorted(body["product_id"] for body in rescreens) == sorted(f"XB-DRESS-{n}" for n in range(100))
    partition_of = {b["product_id"]: b["source"]["partition"] for b in seeded}
    for worker, partitions in zip((first, second), owned):
        flipped_here = sum(1 for body in rescreens if partition_of[body["product_id"]] in partitions)
        assert rescreened(worker)[0] == flipped_here, f"worker on {worker.web_port} owns {partitions}"

    fresh = [upsert(f"FRESH-{n}", 1, "CN") for n in range(100)]
    produce(first.bootstrap, first.input_topic, fresh)
    decided = decisions_for(first, fresh)
    assert assignments([first, second]) == owned, "no rebalance since the assignment was read"
    for worker, partitions in zip((first, second), owned):
        mine = [b for b in decided if b["source"]["partition"] in partitions]
        assert mine, f"the worker on {worker.web_port} decided none of the new events"
        assert {(b["policy_version"], b["decision"]) for b in mine} == {(new.version, "allow")}


# --- 6: state survives a restart ------------------------------------------------------------------------------


def test_state_survives_a_worker_restart(start_worker: Callable[..., WorkerProcess]) -> None:
    first = start_worker("worker-1")
    seeded = [upsert("P-kept", 1, "CN"), upsert("R-removed", 1, "CN")]
    produce(first.bootstrap, first.input_topic, seeded)
    assert [b["decision"] for b in decisions_for(first, seeded)] == ["block", "block"]
    produce(first.bootstrap, first.input_topic, [(b"R-removed", None)])
    read_until(
        first.bootstrap, first.decisions_topic, lambda records: any(r.body is None for r in records),
        what="forwarding the tombstone", log=first.tail_log,
    )
    assert first.stop() == 0, first.tail_log()

    second = start_worker("worker-2")
    assert second.app_id == first.app_id
    after = [upsert("P-kept", 2, "ID"), upsert("R-removed", 2, "CN"), upsert("S-new", 1, "CN")]
    produce(second.bootstrap, second.input_topic, after)
    bodies = decisions_for(second, after)
    assert [(b["decision"], b["previous_decision"], b["changed"]) for b in bodies] == [
        ("allow", "block", True),  # recovered from the changelog
        ("block", None, True),  # the tombstone's delete reached the changelog too
        ("block", None, True),
    ], second.tail_log()


def test_policy_published_while_no_worker_runs_is_applied_to_recovered_state_once(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path,
) -> None:
    first = start_worker("worker-1")
    known = [upsert(f"XB-DRESS-{n}", 1, "CN") for n in range(30)] + [upsert(f"LOCAL-{n}", 1, "ID") for n in range(10)]
    produce(first.bootstrap, first.input_topic, known)
    decisions_for(first, known)
    assert first.stop() == 0, first.tail_log()

    path, new = write_policy(tmp_path, new_version(), dresses_restricted=False)
    publish_policy(first.bootstrap, path, policy_topic)
    second = start_worker("worker-2")
    assert policy_in_force(second, new)
    wait_for(lambda: rescreened(second) == (30, 10), "re-screening the recovered products", second.tail_log)
    rescreens = rescreen_bodies(read_to_end(second.bootstrap, second.decisions_topic))
    assert sorted(body["product_id"] for body in rescreens) == sorted(f"XB-DRESS-{n}" for n in range(30))
    assert {(body["decision"], body["previous_decision"]) for body in rescreens} == {("allow", "block")}
    assert second.stop() == 0, second.tail_log()

    # The re-screened state was written to the changelog too: a third worker recovers it and re-screens nothing.
    third = start_worker("worker-3")
    probe = [upsert("XB-DRESS-0", 2, "CN")]
    produce(third.bootstrap, third.input_topic, probe)
    [body] = decisions_for(third, probe)
    assert (body["decision"], body["previous_decision"], body["changed"], body["policy_version"]) == (
        "allow", "allow", False, new.version
    ), third.tail_log()
    assert rescreened(third) == (0, 0)
    assert not [e for e in log_events(third) if e.get("event") == "rescreen_started"], third.tail_log()
    assert len(rescreen_bodies(read_to_end(third.bootstrap, third.decisions_topic))) == 30


# --- 7: the policy topic at start -----------------------------------------------------------------------------


def test_worker_starts_with_the_newest_valid_policy_on_the_topic(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path, kafka: str,
) -> None:
    bundled = tmp_path / "bundled.yaml"
    bundled.write_text(BUNDLED_TEXT, encoding="utf-8")
    path, new = write_policy(tmp_path, new_version(), dresses_restricted=False)
    publish_policy(kafka, bundled, policy_topic)  # history: the bundled policy, then the new one, then an invalid one
    publish_policy(kafka, path, policy_topic)
    produce_raw(kafka, policy_topic, b"broken", b"version: [not, a, version]\n")

    worker = start_worker()
    entries = log_events(worker)
    [starting] = [e for e in entries if e.get("event") == "starting"]
    assert starting["logger"] == "worker" and starting["policy_version"] == new.version
    assert f"policy {new.version} (from topic {policy_topic})" in starting["message"], starting["message"]
    assert policy_in_force(worker, new)  # its series alone: none for the bundled policy
    [ignored] = [e for e in entries if e.get("event") == "policy_ignored"]
    assert ignored["level"] == "warning" and f"{policy_topic}[0]@2" in ignored["message"], ignored
    assert sample(worker.metrics(), "compliance_policy_rejected_total", reason="invalid") == 0  # counted when published

    message = upsert("P-start", 1, "CN")
    produce(worker.bootstrap, worker.input_topic, [message])
    [body] = decisions_for(worker, [message])
    assert (body["decision"], body["policy_version"]) == ("allow", new.version)


def test_start_does_not_put_older_policies_in_force(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path, kafka: str,
) -> None:
    bundled = tmp_path / "bundled.yaml"
    bundled.write_text(BUNDLED_TEXT, encoding="utf-8")
    path, new = write_policy(tmp_path, new_version(), dresses_restricted=False)
    publish_policy(kafka, bundled, policy_topic)
    publish_policy(kafka, path, policy_topic)
    worker = start_worker()
    assert policy_in_force(worker, new)
    # The follower has read the topic once a document published now is in force (it would be replayed otherwise).
    later_path, later = write_policy(tmp_path, new_version(), dresses_restricted=False, food_restricted=False)
    publish_policy(kafka, later_path, policy_topic)
    wait_for(lambda: policy_in_force(worker, later), f"policy {later.version} in force", worker.tail_log)
    changes = [(e["previous"], e["policy_version"]) for e in log_events(worker) if e.get("event") == "policy_changed"]
    assert changes == [(new.version, later.version)], changes


def test_first_log_line_is_the_start_line(start_worker: Callable[..., WorkerProcess]) -> None:
    worker = start_worker()
    first = orjson.loads(worker.log_path.read_text().splitlines()[0])
    assert first.get("event") == "starting", first


# --- a reused version ------------------------------------------------------------------------------------------


def test_a_rejected_reused_version_is_not_put_in_force_by_a_worker_started_later(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path,
) -> None:
    first = start_worker("worker-1")
    version = new_version()
    path_a = tmp_path / "a.yaml"
    path_a.write_text(policy_text(version, dresses_restricted=False), encoding="utf-8")
    path_b = tmp_path / "b.yaml"
    path_b.write_text(policy_text(version, dresses_restricted=False, food_restricted=False), encoding="utf-8")
    policy_a, policy_b = parse_policy_bytes(path_a.read_bytes()), parse_policy_bytes(path_b.read_bytes())
    assert policy_a.version == policy_b.version and policy_a.digest != policy_b.digest

    publish_policy(first.bootstrap, path_a, policy_topic)
    wait_for(lambda: policy_in_force(first, policy_a), "document A in force", first.tail_log)
    publish_policy(first.bootstrap, path_b, policy_topic)  # same version, other content: rejected live
    wait_for(
        lambda: sample(first.metrics(), "compliance_policy_rejected_total", reason="version_reused") == 1,
        "rejecting document B", first.tail_log,
    )
    assert policy_in_force(first, policy_a)

    second = start_worker("worker-2")  # e.g. a pod restarted, or scaled out
    assert policy_in_force(first, policy_a)
    assert policy_in_force(second, policy_a), (
        "the two workers of one group run different documents under one version "
        f"(second: {[l for l in second.metrics().splitlines() if l.startswith('compliance_policy_info')]})"
    )


# --- 8: re-screening at scale ---------------------------------------------------------------------------------


def test_rescreen_at_scale(
    start_worker: Callable[..., WorkerProcess], policy_topic: str, tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    count = int(os.environ.get("RESCREEN_PRODUCTS", "20000"))
    timeout = WAIT + count / 200  # seconds for each step that scales with the number of products
    worker = start_worker()
    path, new = write_policy(tmp_path, new_version(), dresses_restricted=False)

    # A third each: cross-border dresses (flip to allow), domestic dresses and cross-border snacks (unchanged).
    kinds = [("XB-DRESS", "CN", DRESS), ("LOCAL-DRESS", "ID", DRESS), ("XB-SNACK", "CN", SNACKS)]
    known = [upsert(f"{kinds[n % 3][0]}-{n:07d}", 1, kinds[n % 3][1], kinds[n % 3][2]) for n in range(count)]
    flips = sum(1 for n in range(count) if n % 3 == 0)
    started = time.monotonic()
    produce(worker.bootstrap, worker.input_topic, known)
    read_until(
        worker.bootstrap, worker.decisions_topic, lambda records: len(records) >= count, timeout=timeout,
        what=f"{count} decisions", log=worker.tail_log,
    )
    seeded_seconds = time.monotonic() - started

    publish_policy(worker.bootstrap, path, policy_topic)
    # Live traffic during the re-screen: domestic dresses (allowed under both, never flipped).
    probes = [upsert(f"PROBE-{n}", 1, "ID") for n in range(200)]
    probes_sent_ms = time.time() * 1000
    produce(worker.bootstrap, worker.input_topic, probes)
    probe_bodies = decisions_for(worker, probes)
    probes_old = sum(1 for b in probe_bodies if b["policy_version"] == OLD.version)

    wait_for(
        lambda: rescreened(worker) == (flips, count - flips + probes_old),
        f"re-screening {count} products", worker.tail_log, timeout=timeout,
    )
    finished = rescreen_finished(worker, new)
    assert finished is not None and (finished["changed"], finished["unchanged"]) == (flips, count - flips + probes_old)
    records = read_to_end(worker.bootstrap, worker.decisions_topic, timeout=timeout)
    rescreens = [r for r in records if r.is_rescreen]
    assert len(rescreens) == flips
    assert len({r.record.key for r in rescreens}) == flips
    assert {(body["decision"], body["previous_decision"]) for body in rescreen_bodies(rescreens)} == {("allow", "block")}

    [policy_record] = read_to_end(worker.bootstrap, policy_topic, json=False)
    published_ms = policy_record.record.timestamp_ms
    first_flip_s = (min(r.record.timestamp_ms for r in rescreens) - published_ms) / 1000
    last_flip_s = (max(r.record.timestamp_ms for r in rescreens) - published_ms) / 1000
    probe_decided_ms = [r.record.timestamp_ms for r in records if r.record.key and r.record.key.startswith(b"PROBE-")]
    probe_latency_s = (max(probe_decided_ms) - probes_sent_ms) / 1000
    text = worker.metrics()
    figures = {
        "products": count,
        "decisions_published": len(rescreens),
        "unchanged": count - flips,
        "seed_seconds": round(seeded_seconds, 2),
        "policy_record_to_first_flip_seconds": round(first_flip_s, 3),
        "policy_record_to_last_flip_seconds": round(last_flip_s, 3),
        "worker_pass_seconds": finished["seconds"],
        "metric_last_duration_seconds": sample(text, "compliance_rescreen_last_duration_seconds"),
        "products_per_second": round(count / last_flip_s, 1) if last_flip_s > 0 else None,
        "probes_decided_under_old_policy": probes_old,
        "probes_sent_to_last_probe_decided_seconds": round(probe_latency_s, 3),
        "worker_rss_mb": round(sample(text, "process_resident_memory_bytes") / 1e6, 1),
    }
    print(f"\nre-screen at scale: {orjson.dumps(figures).decode()}")
    for name, value in figures.items():
        record_property(name, value)
