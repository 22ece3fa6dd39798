"""`compliance-worker policy publish` against the real broker: the record, byte for byte, on a compacted topic."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.integration.kafka import Record, consume
from worker.core.policy import BUNDLED_POLICY, parse_policy_bytes

SCRIPT = Path(sys.executable).with_name("compliance-worker")


def publish(bootstrap: str, path: Path, topic: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KAFKA_", "POLICY_", "TOPIC_"))}
    return subprocess.run(
        [str(SCRIPT), "policy", "publish", str(path), "--bootstrap", bootstrap, "--topic", topic, "--timeout", "30"],
        capture_output=True, text=True, env=env, timeout=90, check=False,
    )


def topic_facts(bootstrap: str, topic: str) -> tuple[bool, int, str | None]:
    """(exists, partitions, cleanup.policy) as the broker reports them."""

    async def run() -> tuple[bool, int, str | None]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            if topic not in set(await admin.list_topics()):
                return False, 0, None
            described = await admin.describe_topics([topic])
            responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            configs = {
                entry[0]: entry[1] for response in responses for resource in response.resources for entry in resource[4]
            }
            return True, len(described[0]["partitions"]), configs.get("cleanup.policy")
        finally:
            await admin.close()

    return asyncio.run(run())


def create_plain_topic(bootstrap: str, topic: str, partitions: int) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "delete"})])
        finally:
            await admin.close()

    asyncio.run(run())


@pytest.fixture
def topic() -> str:
    return f"it-{uuid.uuid4().hex[:10]}.policies"


@pytest.fixture
def bundled(tmp_path: Path) -> Path:
    path = tmp_path / "default.yaml"
    path.write_bytes(resources.files("worker.policies").joinpath(BUNDLED_POLICY).read_bytes())
    return path


def test_publish_creates_a_compacted_topic_and_the_record_reads_back_unchanged(kafka: str, topic: str, bundled: Path) -> None:
    data = bundled.read_bytes()
    result = publish(kafka, bundled, topic)
    assert result.returncode == 0, result.stderr
    digest = parse_policy_bytes(data).digest
    assert result.stdout == (
        f"published policy 2026.11.0 ({len(data):,} bytes, digest {digest}) to {topic} (created it: compacted, 1 partition) "
        f"partition 0 offset 0 at {kafka}\n"
    )
    assert result.stderr == ""

    records = consume(kafka, topic, expected=1, settle=0.5)
    assert [(r.partition, r.offset, r.key, r.value) for r in records] == [(0, 0, b"2026.11.0", data)]
    assert topic_facts(kafka, topic) == (True, 1, "compact")


def test_each_publish_appends_keyed_by_its_version(kafka: str, topic: str, bundled: Path, tmp_path: Path) -> None:
    newer = tmp_path / "newer.json"
    newer.write_bytes(
        b'{"version": "2026.12.0", "cross_border": {"home_countries": ["ID"], "signals": ["seller_country"]},'
        b' "clusters": {"crafts": {"title": "Crafts", "effective_from": "2026-12-01"}},'
        b' "category_rules": [{"id": "ae-2-1", "cluster": "crafts"}], "exempt_sellers": ["S-1"]}'
    )
    outputs = [publish(kafka, path, topic) for path in (bundled, newer, bundled)]
    assert [result.returncode for result in outputs] == [0, 0, 0], [result.stderr for result in outputs]
    assert [result.stdout.rsplit(" partition ", 1)[1] for result in outputs] == [
        f"0 offset {offset} at {kafka}\n" for offset in range(3)
    ]
    assert "(created it" in outputs[0].stdout and "(created it" not in outputs[1].stdout + outputs[2].stdout
    records: list[Record] = consume(kafka, topic, expected=3, settle=0.5)
    assert [(r.key, r.value) for r in records] == [
        (b"2026.11.0", bundled.read_bytes()), (b"2026.12.0", newer.read_bytes()), (b"2026.11.0", bundled.read_bytes()),
    ]


def test_existing_topic_is_used_as_it_is_with_a_warning(kafka: str, topic: str, bundled: Path) -> None:
    create_plain_topic(kafka, topic, partitions=2)
    result = publish(kafka, bundled, topic)
    assert result.returncode == 0, result.stderr
    assert "(created it" not in result.stdout
    warnings = result.stderr.splitlines()
    assert warnings == [
        f"compliance-worker policy publish: warning: topic {topic} has 2 partitions, not 1: "
        "documents of different versions are not in one order",
        f"compliance-worker policy publish: warning: topic {topic} has cleanup.policy=delete, not compact: "
        "old policies expire with retention",
    ]
    assert topic_facts(kafka, topic) == (True, 2, "delete")  # never altered
    assert [(r.key, r.value) for r in consume(kafka, topic, expected=1, settle=0.5)] == [(b"2026.11.0", bundled.read_bytes())]


def test_invalid_policy_is_refused_and_nothing_is_created(kafka: str, topic: str, bundled: Path) -> None:
    bundled.write_bytes(bundled.read_bytes() + b'minimum_price: {enabled: true, amount: "0", currency: USD}\n')
    result = publish(kafka, bundled, topic)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"compliance-worker policy publish: {bundled}: minimum_price.amount: must be greater than 0, got '0'\n"
    assert topic_facts(kafka, topic) == (False, 0, None)
