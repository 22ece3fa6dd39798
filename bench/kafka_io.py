"""The Kafka side of the benches: the bench broker, fresh topics, pre-loading input, waiting for and reading outputs."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner

ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka.sh"

# Every bench topic stamps records with the broker's clock when it appends them, so input and output
# timestamps come from one clock and measure what the broker saw, not when a producer built a batch.
TOPIC_CONFIG = {"message.timestamp.type": "LogAppendTime"}


class HarnessError(Exception):
    """The bench itself could not run (broker, process or timeout trouble) - never a missed target."""


class LocalBroker:
    """A fresh single-node KRaft broker from scripts/kafka.sh on its own port and state directory."""

    def __init__(self, port: int, home: Path) -> None:
        self.port = port
        self.home = home
        self.started = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, command: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_HOME_DIR": str(self.home)}
        env.pop("KAFKA_CONTROLLER_PORT", None)
        return subprocess.run([str(KAFKA_SCRIPT), command], env=env, capture_output=True, text=True)

    def start(self) -> str:
        self._run("down")  # a broker left over from an interrupted bench run on this state directory
        shutil.rmtree(self.home, ignore_errors=True)
        self.started = True  # from here on, stop() runs `down` (harmless if `up` failed or was interrupted)
        for attempt in range(3):
            started = self._run("up")
            if started.returncode == 0 or "Address already in use" not in started.stdout + started.stderr:
                break
            # A broker stopped moments ago on the same ports can keep them for a while; wait, don't fail the run.
            time.sleep(15)
        if started.returncode != 0:
            self.stop()
            raise HarnessError(
                f"the bench broker did not start on port {self.port} (use --port or --bootstrap):\n"
                f"{started.stdout}{started.stderr}"
            )
        return started.stdout.strip()

    @property
    def pid(self) -> int | None:
        try:
            return int((self.home / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.started:
            self._run("down")
            self.started = False


@dataclass(frozen=True)
class Topics:
    input: str
    decisions: str
    dead_letter: str
    input_partitions: int
    output_partitions: int

    @classmethod
    def fresh(cls, run_id: str, name: str, input_partitions: int, output_partitions: int) -> Topics:
        prefix = f"bench-{run_id}-{name}"
        return cls(f"{prefix}.input", f"{prefix}.decisions", f"{prefix}.dead-letter", input_partitions, output_partitions)

    def input_tps(self) -> list[TopicPartition]:
        return [TopicPartition(self.input, p) for p in range(self.input_partitions)]

    def output_tps(self) -> list[TopicPartition]:
        return [
            TopicPartition(topic, p) for topic in (self.decisions, self.dead_letter) for p in range(self.output_partitions)
        ]


class Kafka:
    """One admin client and one group-less consumer (for end offsets) shared by all benches of a run."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
        self.observer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
        )

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self.admin.start(), 30)
            await asyncio.wait_for(self.observer.start(), 30)
        except Exception as exc:
            await self.close()
            raise HarnessError(f"cannot reach Kafka at {self.bootstrap}: {exc!r}") from None

    async def close(self) -> None:
        await self.observer.stop()
        await self.admin.close()

    async def create(self, topics: Topics) -> None:
        await self.admin.create_topics([
            NewTopic(topics.input, topics.input_partitions, 1, topic_configs=TOPIC_CONFIG),
            NewTopic(topics.decisions, topics.output_partitions, 1, topic_configs=TOPIC_CONFIG),
            NewTopic(topics.dead_letter, topics.output_partitions, 1, topic_configs=TOPIC_CONFIG),
        ])
        # The observer learns the new topics' leaders before anyone asks it for end offsets.
        deadline = time.monotonic() + 30
        while True:
            await self.observer._client.force_metadata_update()  # noqa: SLF001 - aiokafka has no public call
            known = self.observer._client.cluster.topics()  # noqa: SLF001
            if {topics.input, topics.decisions, topics.dead_letter} <= known:
                return
            if time.monotonic() > deadline:
                raise HarnessError(f"topics {topics} not in the broker's metadata after 30s")
            await asyncio.sleep(0.1)

    async def preload(self, topic: str, events: Iterable[tuple[bytes | None, bytes | None]]) -> tuple[int, float]:
        """Write all events with acks=all as fast as aiokafka can (whole batches); (count, seconds)."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", max_batch_size=1 << 20, max_request_size=8 << 20,
            linger_ms=50,
        )
        await producer.start()
        started = time.monotonic()
        count = 0
        try:
            partitions = sorted(await producer.partitions_for(topic))
            partition_of = DefaultPartitioner()
            builders: dict[int, Any] = {}
            pending = []
            for key, value in events:
                partition = partition_of(key, partitions, partitions)
                builder = builders.get(partition)
                if builder is None:
                    builder = builders[partition] = producer.create_batch()
                if builder.append(key=key, value=value, timestamp=None) is None:
                    pending.append(await producer.send_batch(builder, topic, partition=partition))
                    builder = builders[partition] = producer.create_batch()
                    if builder.append(key=key, value=value, timestamp=None) is None:
                        raise HarnessError(f"an event of {len(value or b'')} bytes does not fit an empty batch")
                count += 1
                if len(pending) >= 64:
                    await asyncio.gather(*pending)
                    pending.clear()
            for partition, builder in builders.items():
                if builder.record_count():
                    pending.append(await producer.send_batch(builder, topic, partition=partition))
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        return count, time.monotonic() - started

    async def end_total(self, tps: list[TopicPartition]) -> int:
        ends = await self.observer.end_offsets(tps)
        return sum(ends.values())

    async def wait_for(
        self, tps: list[TopicPartition], expected: int, *, check: Callable[[], None], on_poll: Callable[[int], None],
        timeout: float, stall: float, what: str,
    ) -> float:
        """Poll end offsets until `expected` records are on `tps`; returns time.time() when seen.

        `check` raises if a process under test died; no new record for `stall` s or `timeout` s in all is an error.
        """
        started = last_change = time.monotonic()
        last_total = -1
        while True:
            total = await self.end_total(tps)
            now = time.monotonic()
            on_poll(total)
            if total >= expected:
                return time.time()
            check()
            if total != last_total:
                last_total, last_change = total, now
            if now - last_change > stall:
                raise HarnessError(f"{what}: no new output for {stall:.0f}s at {total:,}/{expected:,} records")
            if now - started > timeout:
                raise HarnessError(f"{what}: only {total:,}/{expected:,} records after {timeout:.0f}s")
            await asyncio.sleep(0.25)

    async def scan(self, tps: list[TopicPartition], on_record: Callable[[Any], None]) -> int:
        """Read `tps` from the beginning to their current end (read_committed), calling on_record per record."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, isolation_level="read_committed",
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
        )
        await consumer.start()
        count = 0
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            # End offsets from the observer: asked on this consumer before the seek, aiokafka 0.14 then fetched nothing.
            ends = await self.observer.end_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            deadline = time.monotonic() + 300
            while remaining:
                if time.monotonic() > deadline:
                    raise HarnessError(f"reading {sorted(map(str, remaining))} took more than 300s")
                batches = await consumer.getmany(timeout_ms=500, max_records=20_000)
                for tp, messages in batches.items():
                    for message in messages:
                        on_record(message)
                    count += len(messages)
                    if messages and messages[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        return count
