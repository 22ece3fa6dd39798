"""A three-node Apache Kafka (KRaft) cluster on loopback ports for fault tests: start, kill, restart, find leaders."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.cluster import ClusterMetadata
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from tests.integration.conftest import KAFKA_SCRIPT, ROOT, free_port
from tests.integration.kafka import Record

# Appended to every node's generated server.properties (later keys win): replicated internal topics, so
# transactions and the group coordinator survive one broker down, and acks=all needs two replicas in sync.
CLUSTER_PROPERTIES = """\
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
num.io.threads=2
num.replica.fetchers=1
unclean.leader.election.enable=false
"""


class ClusterError(RuntimeError):
    """A node did not start, stop or answer as expected."""


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    home: Path
    running: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def kafka_cluster_id() -> str:
    """16 random bytes in base64url without padding, never beginning with '-', as Kafka's Uuid.randomUuid draws them."""
    while (cluster_id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
        pass
    return cluster_id


@dataclass
class KafkaCluster:
    """Three combined broker+controller nodes sharing one cluster id and quorum, each with its own ports and home."""

    size: int = 3
    base: Path = field(default_factory=lambda: ROOT / ".cache" / "kafka" / f"cluster-{uuid.uuid4().hex[:8]}")
    start_timeout: float = 180.0
    nodes: dict[int, Node] = field(init=False)
    cluster_id: str = field(init=False)
    started_in: float | None = None

    def __post_init__(self) -> None:
        self.nodes = {
            node_id: Node(node_id, free_port(), free_port(), self.base / f"node-{node_id}")
            for node_id in range(1, self.size + 1)
        }
        self.cluster_id = kafka_cluster_id()

    @property
    def voters(self) -> str:
        return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes.values())

    @property
    def bootstrap(self) -> str:
        """Every node's address: clients find the cluster through whichever answers."""
        return ",".join(n.address for n in self.nodes.values())

    @property
    def live_bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes.values() if n.running)

    def _env(self, node: Node) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
        env.update({
            "KAFKA_PORT": str(node.port),
            "KAFKA_CONTROLLER_PORT": str(node.controller_port),
            "KAFKA_HOME_DIR": str(node.home),
            "KAFKA_NODE_ID": str(node.node_id),
            "KAFKA_QUORUM_VOTERS": self.voters,
            "KAFKA_CLUSTER_ID": self.cluster_id,
            "KAFKA_EXTRA_PROPERTIES": str(self.base / "cluster.properties"),
            "KAFKA_START_TIMEOUT": str(int(self.start_timeout)),
        })
        return env

    def _script(self, node: Node, command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(KAFKA_SCRIPT), command], env=self._env(node), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def _finish(self, runs: Mapping[int, subprocess.Popen[str]], command: str) -> None:
        failures = []
        for node_id, run in runs.items():
            out, err = run.communicate(timeout=self.start_timeout + 60)
            if run.returncode != 0:
                failures.append(f"node {node_id} `kafka.sh {command}` exited {run.returncode}:\n{out}\n{err}")
        if failures:
            raise ClusterError("\n".join(failures))

    def up(self) -> float:
        """Start every node at once (a node is ready only once a majority of voters runs); seconds it took."""
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / "cluster.properties").write_text(CLUSTER_PROPERTIES)
        started = time.monotonic()
        runs = {node_id: self._script(node, "up") for node_id, node in self.nodes.items()}
        try:
            self._finish(runs, "up")
        finally:
            for node_id in runs:
                self.nodes[node_id].running = True  # a half-started node is stopped by down() too
        self.started_in = time.monotonic() - started
        return self.started_in

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (a crash) and wait until its ports are closed."""
        node = self.nodes[node_id]
        self._finish({node_id: self._script(node, "kill")}, "kill")
        node.running = False

    def restart(self, node_id: int) -> float:
        """Start a stopped node again on its old ports and data; seconds until it is ready."""
        node = self.nodes[node_id]
        started = time.monotonic()
        self._finish({node_id: self._script(node, "up")}, "up")
        node.running = True
        return time.monotonic() - started

    def down(self) -> None:
        """Stop every node (concurrently) and remove the cluster's files."""
        runs = {node_id: self._script(node, "down") for node_id, node in self.nodes.items()}
        for run in runs.values():
            run.communicate(timeout=120)
        for node in self.nodes.values():
            node.running = False
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self, node_id: int) -> Path:
        return self.nodes[node_id].home / "broker.log"

    # --- metadata, through aiokafka's admin client against the nodes that run ---------------

    async def _describe(self, topics: list[str]) -> list[dict]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.live_bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            return list(await admin.describe_topics(topics))
        finally:
            await admin.close()

    def partitions(self, topic: str, timeout: float = 30.0) -> dict[int, dict]:
        """Partition -> its metadata (leader, replicas, isr) as the cluster reports it now.

        Retried for a while: right after a kill the client may still pick the dead node for its request.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                (described,) = asyncio.run(self._describe([topic]))
                return {p["partition"]: p for p in described["partitions"]}
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def leader_of(self, topic: str, partition: int) -> int:
        """The node id leading ``topic[partition]`` now (-1 while it has none)."""
        return int(self.partitions(topic)[partition]["leader"])

    def coordinator_of(self, group_id: str) -> int:
        """The node id coordinating consumer group ``group_id`` now."""

        async def run() -> int:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.live_bootstrap, request_timeout_ms=10_000)
            await admin.start()
            try:
                return int(await admin.find_coordinator(group_id))
            finally:
                await admin.close()

        return asyncio.run(run())

    def create_topics(
        self, names: list[str], partitions: int = 4, replicas: list[int] | None = None,
        config: Mapping[str, str] | None = None,
    ) -> None:
        """Replicated topics; with ``replicas`` every partition gets that replica list (its first is the leader)."""

        async def run() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.live_bootstrap, request_timeout_ms=30_000)
            await admin.start()
            try:
                if replicas is None:
                    new = [NewTopic(name, partitions, self.size, topic_configs=dict(config or {})) for name in names]
                else:
                    assignment = {p: list(replicas) for p in range(partitions)}
                    new = [NewTopic(name, -1, -1, replica_assignments=assignment, topic_configs=dict(config or {}))
                           for name in names]
                await admin.create_topics(new)
            finally:
                await admin.close()

        asyncio.run(run())
        self.wait_known(names, partitions)

    def wait_known(self, topics: list[str], partitions: int, timeout: float = 60.0) -> None:
        """Poll every running node until its own metadata lists ``topics`` with all partitions led.

        A topic reaches each broker's metadata cache a moment after it is created; a client that
        asks a lagging broker first would see no partitions.
        """

        async def known(node: Node) -> bool:
            connection = await create_conn("127.0.0.1", node.port, request_timeout_ms=10_000)
            try:  # asked of this node alone; never auto-create (the generated config allows it)
                response = await connection.send(MetadataRequest(topics, allow_auto_topic_creation=False))
            finally:
                connection.close()
            metadata = ClusterMetadata()
            metadata.update_metadata(response)
            return all(
                len(metadata.partitions_for_topic(topic) or ()) == partitions
                and len(metadata.available_partitions_for_topic(topic) or ()) == partitions
                for topic in topics
            )

        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            while node.running and not asyncio.run(known(node)):
                if time.monotonic() > deadline:
                    raise ClusterError(f"node {node.node_id} does not know {topics} after {timeout}s")
                time.sleep(0.2)

    def wait_in_sync(self, topics: list[str], timeout: float = 120.0) -> None:
        """Poll until every partition of ``topics`` has a leader and all its replicas in sync."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                described = asyncio.run(self._describe(topics))
                last = [(t["topic"], p["partition"], p["leader"], p["replicas"], p["isr"])
                        for t in described for p in t["partitions"]]
                if described and all(
                    p["leader"] >= 0 and sorted(p["isr"]) == sorted(p["replicas"])
                    for t in described for p in t["partitions"]
                ) and all(t["partitions"] for t in described):
                    return
            except Exception as exc:  # noqa: BLE001 - metadata may be briefly unavailable; polled again
                last = exc
            time.sleep(0.5)
        raise ClusterError(f"{topics} not fully in sync after {timeout}s: {last}")


def read_to_end(bootstrap: str, topic: str, isolation_level: str = "read_committed", timeout: float = 120.0) -> list[Record]:
    """Every record of ``topic`` from the beginning up to its end now (the last stable offset, for read_committed)."""

    async def run() -> list[Record]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation_level,
            auto_offset_reset="earliest", request_timeout_ms=30_000,
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + timeout
            metadata = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - the consumer has no public call
            partitions = metadata.partitions_for_topic(topic) or set()
            assert partitions, f"topic {topic} has no partitions"
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            records: list[Record] = []
            while True:
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= ends[tp] for tp in tps):
                    return records
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{topic} ({isolation_level}): at {positions} of {ends} after {timeout}s")
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in batch)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def uncommitted_records(bootstrap: str, topics: list[str], timeout: float = 30.0) -> int:
    """How many records of ``topics`` lie past their last stable offset: the output of transactions still open."""

    async def ends(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return await asyncio.wait_for(consumer.end_offsets(tps), timeout)

    async def run() -> int:
        committed = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
        everything = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
        await committed.start()
        await everything.start()
        try:
            metadata = await committed._client.fetch_all_metadata()  # noqa: SLF001 - the consumer has no public call
            tps = [TopicPartition(t, p) for t in topics for p in sorted(metadata.partitions_for_topic(t) or ())]
            stable, high = await ends(committed, tps), await ends(everything, tps)
            return sum(high[tp] - stable[tp] for tp in tps)
        finally:
            await committed.stop()
            await everything.stop()

    return asyncio.run(run())
