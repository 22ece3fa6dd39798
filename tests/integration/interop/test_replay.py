"""Dead letters have a way back: events a policy could not decide (NO_EXCHANGE_RATE), sent with kcat and headers,
are replayed by `compliance-worker dead-letters replay` after a fixed policy is published, and decided exactly once;
a dry run publishes nothing and a --code filter leaves other dead letters where they are."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import WorkerProcess
from tests.integration.interop.clients import kcat_envelopes, kcat_headers, kcat_read, kcat_send
from tests.integration.prometheus import sample
from tests.integration.test_policy_publish import publish
from worker.core.policy import BUNDLED_POLICY, parse_policy_bytes

SCRIPT = Path(sys.executable).with_name("compliance-worker")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PHONE = "Electronics > Communications > Telephony > Mobile Phones"  # in no cluster: the minimum price judges it
WAIT = 60.0


def policy_file(tmp_path: Path, version: str, rates: dict[str, str]) -> Path:
    """The bundled policy under ``version`` with a minimum price of 100 USD and these exchange rates."""
    text = resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_text(encoding="utf-8")
    assert text.count('version: "2026.11.0"') == 1, "the bundled policy changed"
    rule = {"enabled": True, "amount": "100.00", "currency": "USD", "exchange_rates": rates}
    path = tmp_path / f"{version}.yaml"
    path.write_text(
        text.replace('version: "2026.11.0"', f'version: "{version}"') + f"minimum_price: {orjson.dumps(rule).decode()}\n",
        encoding="utf-8",
    )
    return path


def phone(product_id: str, event_id: str, currency: str) -> str:
    # Spacing and key order as an upstream wrote them: a replay must keep the bytes, not re-serialise them.
    return (
        f'{{"event_id": "{event_id}",  "product": {{"id": "{product_id}", "seller": {{"country": "CN"}}, '
        f'"ship_from_country": "CN", "category": {{"path": "{PHONE}"}}, '
        f'"price": {{"currency": "{currency}", "amount": "12.50"}}}}}}'
    )


def replay(worker: WorkerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed console script with the worker's own settings (env), as an operator runs it."""
    return subprocess.run(
        [str(SCRIPT), "dead-letters", "replay", "--json", *args], env=worker.env(), capture_output=True, text=True,
        timeout=120, check=False,
    )


def end_offsets(envelopes: list[dict]) -> dict[int, int]:
    ends: dict[int, int] = {}
    for envelope in envelopes:
        ends[envelope["partition"]] = max(ends.get(envelope["partition"], 0), envelope["offset"] + 1)
    return ends


def wait_until_decided_to(worker: WorkerProcess, ends: dict[int, int]) -> None:
    """The worker has read each input partition to ``ends`` and committed it: every output of those records is
    acknowledged by the broker (at least once: decisions and dead letters before the commit)."""
    deadline = time.monotonic() + WAIT
    seen: object = None
    while time.monotonic() < deadline:
        try:
            text = worker.metrics()
            seen = {
                p: (sample(text, "compliance_consumer_end_offset", topic=worker.input_topic, partition=str(p)),
                    sample(text, "compliance_consumer_lag", topic=worker.input_topic, partition=str(p)))
                for p in ends
            }
        except AssertionError as missing:
            seen = missing
        else:
            if seen == {p: (float(end), 0.0) for p, end in ends.items()}:
                return
        time.sleep(0.2)
    pytest.fail(f"the worker did not catch up to {ends} (end offset, lag: {seen}):\n{worker.tail_log()}", pytrace=False)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_dead_letters_are_replayed_after_the_policy_is_fixed(
    kafka: str, topics: dict[str, str], tmp_path: Path, guarantee: str,
) -> None:
    """Under exactly_once the dead letters are written in transactions: read read_committed, past their markers."""
    policy_topic = f"{topics['input']}.policies"
    worker = WorkerProcess.on(kafka, topics, tmp_path / "worker.log")
    worker.start(
        POLICY_FILE=str(policy_file(tmp_path, "2026.12.0", {"IDR": "0.0000625"})), POLICY_TOPIC=policy_topic,
        PROCESSING_GUARANTEE=guarantee,
    )
    try:
        worker.wait_ready()
        euro = {f"R-Ü-{n}": f"r-{n}" for n in range(6)}  # product id -> event id; a price in EUR, which has no rate
        for n, (product_id, event_id) in enumerate(euro.items()):
            kcat_send(kafka, topics["input"], product_id, phone(product_id, event_id, "EUR"),
                      {"traceparent": TRACEPARENT, "x-source": f"catalog-{n}", "x-batch": "7"})
        for n in range(2):
            kcat_send(kafka, topics["input"], f"J-{n}", '{"event_id": "j", "product": ', {"x-source": "broken"})
        kcat_send(kafka, topics["input"], "R-USD", phone("R-USD", "r-usd", "USD"))
        dead = kcat_read(kafka, topics["dead_letter"], 8)
        codes = Counter(orjson.loads(envelope["payload"])["error"]["code"] for envelope in dead)
        assert codes == {"NO_EXCHANGE_RATE": 6, "INVALID_JSON": 2}, worker.tail_log()
        originals = kcat_envelopes(kafka, topics["input"])
        assert len(originals) == 9

        fixed_path = policy_file(tmp_path, "2026.12.1", {"IDR": "0.0000625", "EUR": "1.08"})
        fixed = parse_policy_bytes(fixed_path.read_bytes())
        published = publish(kafka, fixed_path, policy_topic)
        assert published.returncode == 0, published.stderr
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                if sample(worker.metrics(), "compliance_policy_info", version=fixed.version, digest=fixed.digest[:12]) == 1:
                    break
            except AssertionError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"policy {fixed.version} not in force:\n{worker.tail_log()}", pytrace=False)

        # Dry run (the default): says what it would do, publishes nothing.
        dry = replay(worker)
        assert (dry.returncode, dry.stderr) == (0, ""), dry.stderr
        summary = orjson.loads(dry.stdout)
        assert (summary["dry_run"], summary["read"], summary["selected"], summary["replayed"], summary["by_code"]) == (
            True, 8, 8, 0, {"INVALID_JSON": 2, "NO_EXCHANGE_RATE": 6}
        )
        assert kcat_envelopes(kafka, topics["input"]) == originals

        # Execute, the policy's dead letters only: the INVALID_JSON ones stay where they are.
        executed = replay(worker, "--code", "NO_EXCHANGE_RATE", "--execute")
        assert (executed.returncode, executed.stderr) == (0, ""), executed.stderr
        summary = orjson.loads(executed.stdout)
        assert (summary["dry_run"], summary["read"], summary["replayed"], summary["by_code"], summary["not_selected"],
                summary["skipped"], summary["stopped_by"]) == (
            False, 8, 6, {"NO_EXCHANGE_RATE": 6}, {"INVALID_JSON": 2}, {}, None
        )

        # On the input: each dead-lettered original again, byte for byte, on its partition, its headers in order
        # and then the one naming the dead letter.
        after = kcat_envelopes(kafka, topics["input"])
        replayed = [envelope for envelope in after if envelope not in originals]
        assert len(after) == 15 and len(replayed) == 6
        original_of = {orjson.loads(envelope["payload"])["event_id"]: envelope for envelope in originals
                       if envelope["payload"].startswith('{"event_id": "r-')}
        dead_letter_of = {}
        for envelope in dead:
            body = orjson.loads(envelope["payload"])
            payload = base64.b64decode(body["payload_base64"])
            if body["error"]["code"] == "NO_EXCHANGE_RATE":
                dead_letter_of[orjson.loads(payload)["event_id"]] = envelope
        for envelope in replayed:
            event_id = orjson.loads(envelope["payload"])["event_id"]
            original, letter = original_of[event_id], dead_letter_of[event_id]
            assert (envelope["key"], envelope["payload"], envelope["partition"]) == (
                original["key"], original["payload"], original["partition"]
            )
            assert kcat_headers(envelope) == (
                *kcat_headers(original),
                ("compliance-replay-of", f"{topics['dead_letter']}/{letter['partition']}/{letter['offset']}"),
            )
        assert sorted(orjson.loads(e["payload"])["event_id"] for e in replayed) == sorted(euro.values())

        # Every replayed event decided exactly once, under the fixed policy, with its trace context only.
        wait_until_decided_to(worker, end_offsets(after))
        decisions = kcat_envelopes(kafka, topics["decisions"])
        decided = Counter(orjson.loads(envelope["payload"])["event_id"] for envelope in decisions)
        assert decided == Counter([*euro.values(), "r-usd"]), worker.tail_log()
        for envelope in decisions:
            body = orjson.loads(envelope["payload"])
            if body["event_id"] == "r-usd":
                continue
            assert (body["decision"], body["reasons"][0], body["policy_version"]) == (
                "block", "CROSS_BORDER_BELOW_MINIMUM_PRICE", fixed.version
            )
            assert kcat_headers(envelope) == (("traceparent", TRACEPARENT),)
        # Nothing new failed: the INVALID_JSON dead letters were not replayed, so they did not come back.
        assert len(kcat_envelopes(kafka, topics["dead_letter"])) == 8
    finally:
        assert worker.stop() == 0, worker.tail_log()
