"""`compliance-worker override set|clear|list` against the real broker, with kcat writing what the command would not."""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from confluent_kafka import Producer

from tests.integration.conftest import free_port
from tests.integration.kafka import consume
from tests.integration.test_policy_publish import topic_facts
from tests.tools import require_binary
from worker.core.overrides import parse_override

SCRIPT = Path(sys.executable).with_name("compliance-worker")
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def override(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a person runs it, with only ``settings`` of ours in its environment."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KAFKA_", "OVERRIDES_", "TOPIC_"))}
    return subprocess.run(
        [str(SCRIPT), "override", *args, "--timeout", "20"], env={**env, **settings}, capture_output=True, text=True,
        timeout=90, check=False,
    )


def position(result: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    """(partition, offset) that a set or clear says it published at."""
    found = re.search(r" partition (\d+) offset (\d+) at ", result.stdout)
    assert found is not None, result
    return int(found.group(1)), int(found.group(2))


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert (result.returncode, result.stderr) == (0, ""), result
    return [orjson.loads(line) for line in result.stdout.splitlines()]


def in_days(days: int) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def topic_exists(bootstrap: str, topic: str) -> bool:
    async def run() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return topic in set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(run())


def kcat_produce(bootstrap: str, topic: str, lines: list[str]) -> None:
    """One `key<TAB>value` per line, acknowledged by all replicas."""
    kcat = require_binary("kcat", "Debian package kcat; make test installs it")
    subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-X", "acks=all"],
        input="\n".join(lines) + "\n", text=True, check=True, timeout=60,
    )


@pytest.fixture
def env(kafka: str) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": kafka, "OVERRIDES_TOPIC": f"it-{uuid.uuid4().hex[:10]}.overrides",
            "TOPIC_PARTITIONS": "3"}


def test_set_list_replace_clear_on_a_compacted_topic(kafka: str, env: dict[str, str]) -> None:
    topic = env["OVERRIDES_TOPIC"]
    expires = in_days(30)
    first = override("set", "P-1", "--decision", "block", "--reason", "Counterfeit batik", "--reference", "CASE-1",
                     "--expires", expires, "--author", "dewi", **env)
    assert (first.returncode, first.stderr) == (0, ""), first
    published = re.fullmatch(
        rf"published override for P-1: block until {re.escape(expires)}, reference CASE-1, by dewi at ({TIMESTAMP}), "
        rf"to {re.escape(topic)} \(created it: compacted, 3 partitions\) partition (\d) offset 0 at {re.escape(kafka)}\n",
        first.stdout,
    )
    assert published is not None, first.stdout
    created_at, partition = published.group(1), int(published.group(2))
    assert topic_facts(kafka, topic) == (True, 3, "compact")

    (record,) = consume(kafka, topic, expected=1, settle=0.3)
    assert (record.partition, record.offset, record.key) == (partition, 0, b"P-1")
    assert orjson.loads(record.value or b"") == {
        "decision": "block", "reason": "Counterfeit batik", "reference": "CASE-1", "author": "dewi",
        "created_at": created_at, "expires_at": expires,
    }
    assert parse_override(record.key, record.value or b"").in_force(time.time())

    second = override("set", "P-2", "--decision", "allow", "--reason", "Appeal accepted: made in Solo", **env)
    assert second.returncode == 0 and "(created it" not in second.stdout, second
    assert second.stdout.startswith(f"published override for P-2: allow until cleared, by {getpass.getuser()} at ")
    assert [(row["product_id"], row["decision"], row["status"], row["expires_at"]) for row in
            json_lines(override("list", "--json", **env))] == [
        ("P-1", "block", "in_force", expires), ("P-2", "allow", "in_force", None),
    ]

    replaced = override("set", "P-1", "--decision", "allow", "--reason", "Appeal won", "--author", "sri", **env)
    assert replaced.returncode == 0, replaced
    replaced_at = position(replaced)
    assert replaced_at[0] == partition and replaced_at[1] > 0  # a product's records share its partition
    rows = {row["product_id"]: row for row in json_lines(override("list", "--json", **env))}
    assert {key: rows["P-1"][key] for key in ("decision", "reason", "author", "expires_at", "partition", "offset")} == {
        "decision": "allow", "reason": "Appeal won", "author": "sri", "expires_at": None, "partition": partition,
        "offset": replaced_at[1],
    }

    cleared = override("clear", "P-1", **env)
    assert (cleared.returncode, cleared.stderr) == (0, ""), cleared
    assert re.fullmatch(
        rf"cleared the override of P-1 \(it had allow in force until cleared, set by sri at {TIMESTAMP}\): tombstone "
        rf"published to {re.escape(topic)} partition {partition} offset \d+ at {re.escape(kafka)}\n", cleared.stdout,
    ), cleared.stdout
    tombstones = [r for r in consume(kafka, topic, expected=4, settle=0.3) if r.key == b"P-1" and r.value is None]
    assert [(r.partition, r.offset) for r in tombstones] == [position(cleared)]
    again = override("clear", "P-1", **env)
    assert again.returncode == 0 and again.stdout.startswith("cleared the override of P-1 (it had none): "), again

    listing = override("list", "--active", **env)
    assert (listing.returncode, listing.stderr) == (0, ""), listing
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["PRODUCT", "DECISION", "STATUS", "EXPIRES", "REFERENCE", "AUTHOR", "CREATED_AT", "REASON"]
    assert lines[1].split()[:6] == ["P-2", "allow", "in", "force", "never", "-"]
    assert lines[1].endswith("Appeal accepted: made in Solo")
    assert lines[2] == (
        f"1 product with an override record on {topic} at {kafka}: 1 in force, 0 expired, 0 invalid; 5 records read as "
        f"of {lines[2].rsplit(' ', 1)[1]}"
    )
    assert len(lines) == 3


def test_what_kcat_wrote_shows_as_expired_or_invalid(kafka: str, env: dict[str, str]) -> None:
    topic = env["OVERRIDES_TOPIC"]
    assert override("set", "P-OK", "--decision", "block", "--reason", "r", "--author", "a", **env).returncode == 0
    valid = '{"decision": "allow", "reason": "r", "author": "a", "created_at": "2026-01-01T00:00:00Z"'
    kcat_produce(kafka, topic, [
        f'P-OLD\t{valid}, "expires_at": "2026-02-01T00:00:00Z"}}',
        'P-BAD\t{"decision": "deny", "reason": "r", "author": "a", "created_at": "2026-01-01"}',
        "P-NJ\tnot json",
        f"P-FLIP\t{valid}}}",
        'P-FLIP\t{"decision": "block", "author": "a", "created_at": "2026-01-01"}',
        f'P-NEW\t{valid}, "reference": "T-9", "unknown": {{"ignored": true}}}}',
    ])
    rows = {row["product_id"]: row for row in json_lines(override("list", "--json", **env))}
    assert {product: (row["status"], row["decision"], row["error"]) for product, row in rows.items()} == {
        "P-OK": ("in_force", "block", None),
        "P-OLD": ("expired", "allow", None),
        "P-BAD": ("invalid", None, "decision: must be allow or block, got 'deny'"),
        "P-NJ": ("invalid", None, "not JSON (invalid literal, expected 'null': line 1 column 1 (char 0))"),
        "P-FLIP": ("invalid", None, "reason: required"),  # the latest record decides: no override
        "P-NEW": ("in_force", "allow", None),
    }
    assert list(rows) == sorted(rows)
    active = json_lines(override("list", "--active", "--json", **env))
    assert [row["product_id"] for row in active] == ["P-NEW", "P-OK"]

    table = override("list", **env)
    assert table.returncode == 0, table
    lines = {line.split()[0]: line for line in table.stdout.splitlines()[1:-1]}
    assert lines["P-BAD"].split()[1:3] == ["-", "invalid"]
    assert lines["P-BAD"].endswith("decision: must be allow or block, got 'deny'")
    assert lines["P-OLD"].split()[1:4] == ["allow", "expired", "2026-02-01T00:00:00Z"]
    assert table.stdout.splitlines()[-1].startswith(
        f"6 products with an override record on {topic} at {kafka}: 2 in force, 1 expired, 3 invalid; 7 records read"
    )


def test_a_broker_that_cannot_be_reached_is_exit_1_in_one_line(env: dict[str, str]) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    for args in (["set", "P-1", "--decision", "block", "--reason", "r", "--author", "a"], ["clear", "P-1"], ["list"]):
        result = override(*args, **{**env, "KAFKA_BOOTSTRAP_SERVERS": nowhere})
        assert (result.returncode, result.stdout) == (1, ""), result
        assert re.fullmatch(
            rf"compliance-worker override {args[0]}: cannot reach Kafka at {re.escape(nowhere)}: [^\n]+\n", result.stderr,
        ), result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--decision", "deny", "--reason", "r"], "--decision: must be allow or block, got 'deny'",
                     id="bad-decision"),
        pytest.param(["--decision", "allow", "--reason", "r", "--expires", "2026-01-01T00:00:00Z"],
                     "--expires 2026-01-01T00:00:00Z is not in the future", id="past-expiry"),
    ],
)
def test_invalid_arguments_publish_nothing_and_create_no_topic(
    kafka: str, env: dict[str, str], args: list[str], message: str,
) -> None:
    result = override("set", "P-1", "--author", "a", *args, **env)
    assert (result.returncode, result.stdout) == (2, ""), result
    assert result.stderr.startswith(f"compliance-worker override set: {message}") and result.stderr.count("\n") == 1
    assert not topic_exists(kafka, env["OVERRIDES_TOPIC"])


def test_list_of_a_missing_topic_says_so_and_does_not_create_it(kafka: str, env: dict[str, str]) -> None:
    """The test broker auto-creates topics a client asks metadata for, as Kafka does by default."""
    topic = env["OVERRIDES_TOPIC"]
    result = override("list", **env)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "", f"compliance-worker override list: topic {topic} does not exist at {kafka}: no override was ever set\n",
    )
    assert not topic_exists(kafka, topic)


def test_a_replication_factor_the_cluster_cannot_have_is_exit_2_and_no_topic(kafka: str, env: dict[str, str]) -> None:
    result = override("set", "P-1", "--decision", "block", "--reason", "r", "--author", "a",
                      **{**env, "TOPIC_REPLICATION_FACTOR": "3"})
    assert (result.returncode, result.stdout) == (2, ""), result
    assert result.stderr == (
        f"compliance-worker override set: cannot create topic {env['OVERRIDES_TOPIC']}: TOPIC_REPLICATION_FACTOR=3 but "
        f"the cluster at {kafka} has 1 broker\n"
    )
    assert not topic_exists(kafka, env["OVERRIDES_TOPIC"])


def test_an_existing_topic_that_is_not_compacted_is_used_as_it_is_with_a_warning(kafka: str, env: dict[str, str]) -> None:
    topic = env["OVERRIDES_TOPIC"]

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 2, 1, topic_configs={"cleanup.policy": "delete"})])
        finally:
            await admin.close()

    asyncio.run(create())
    result = override("set", "P-1", "--decision", "block", "--reason", "r", "--author", "a", **env)
    assert result.returncode == 0 and "(created it" not in result.stdout, result
    assert result.stderr == (
        f"compliance-worker override set: warning: topic {topic} has cleanup.policy=delete, not compact: overrides "
        "vanish with retention and cleared ones are kept until then\n"
    )
    assert topic_facts(kafka, topic) == (True, 2, "delete")  # never altered


def test_list_reads_committed_records_only_and_does_not_wait_for_an_open_transaction(kafka: str, env: dict[str, str]) -> None:
    """A tool that writes overrides in transactions: what it aborts or has not committed yet is no override."""
    topic = env["OVERRIDES_TOPIC"]
    assert override("set", "P-1", "--decision", "block", "--reason", "r", "--author", "a", **env).returncode == 0
    document = b'{"decision": "allow", "reason": "bulk import", "author": "tool", "created_at": "2026-11-01"}'
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": f"it-{uuid.uuid4().hex[:8]}", "acks": "all"})
    producer.init_transactions(30)
    for key, outcome in ((b"P-1", "abort"), (b"P-2", "abort"), (b"P-3", "commit"), (b"P-4", "open")):
        producer.begin_transaction()
        producer.produce(topic, value=document, key=key)
        producer.flush(30)
        if outcome == "abort":
            producer.abort_transaction(30)
        elif outcome == "commit":
            producer.commit_transaction(30)
    try:
        rows = json_lines(override("list", "--json", **env))
        assert [(row["product_id"], row["decision"]) for row in rows] == [("P-1", "block"), ("P-3", "allow")]
    finally:
        producer.abort_transaction(30)
