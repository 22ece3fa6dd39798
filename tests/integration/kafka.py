"""Small synchronous aiokafka helpers for tests: create topics, produce, consume with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.core import InvalidEvent, decode_event


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


def create_topics(bootstrap: str, names: list[str], partitions: int = 4) -> None:
    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
        finally:
            await admin.close()

    asyncio.run(run())


def produce(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]) -> int:
    """Send (key, value) pairs with acks=all; returns how many were acknowledged."""

    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, value, key=key) for key, value in messages]
            await asyncio.gather(*futures)
            return len(futures)
        finally:
            await producer.stop()

    return asyncio.run(run())


def consume(bootstrap: str, topic: str, expected: int, timeout: float = 60.0, settle: float = 1.0) -> list[Record]:
    """Read `topic` from the beginning until `expected` records arrived (then `settle` s more to catch extras)."""

    async def run() -> list[Record]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        records: list[Record] = []
        try:
            deadline = time.monotonic() + timeout
            extra_until: float | None = None
            while time.monotonic() < deadline:
                if extra_until is None and len(records) >= expected:
                    extra_until = time.monotonic() + settle
                if extra_until is not None and time.monotonic() >= extra_until:
                    break
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    records.extend(
                        Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in batch
                    )
            return records
        finally:
            await consumer.stop()

    return asyncio.run(run())


def decision_ids_by_event(decisions: Iterable[Record]) -> dict[str, set[str]]:
    """The decision_ids each event's decisions carry: a decision repeated after a crash or rebalance keeps its own."""
    ids: dict[str, set[str]] = defaultdict(set)
    for record in decisions:
        body = orjson.loads(record.value)
        ids[body["event_id"]].add(body["decision_id"])
    return ids


def valid_and_malformed(messages: Iterable[tuple[bytes | None, bytes | None]]) -> tuple[set[str], Counter[bytes]]:
    """The event ids of the valid messages, and each malformed value with how often it was sent."""
    valid: set[str] = set()
    malformed: Counter[bytes] = Counter()
    for _key, value in messages:
        try:
            valid.add(decode_event(value).event_id)
        except InvalidEvent:
            malformed[value or b""] += 1
    return valid, malformed
