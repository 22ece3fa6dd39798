"""A corrupt batch on the broker's disk stops its partition alone, says where and why, and the runbook gets past it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import Broker, WorkerProcess
from tests.integration.interop.clients import java_tool
from tests.integration.prometheus import sample
from tests.integration.test_state_and_policy import decisions_for, log_events, upsert, wait_for

MARKER = b"CORRUPT-ME"


def messages(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    return [upsert(f"{prefix}-{n:03d}", 1, "CN") for n in range(count)]


def produce_batches(bootstrap: str, topic: str, partition: int, batches: list[list[tuple[bytes, bytes]]]) -> None:
    """Each list as one record batch of its own (uncompressed, so the bytes on disk are the records')."""

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=50)
        await producer.start()
        try:
            for batch in batches:
                sends = [await producer.send(topic, value, key=key, partition=partition) for key, value in batch]
                await producer.flush()
                await asyncio.gather(*sends)
        finally:
            await producer.stop()

    asyncio.run(run())


def corrupt(broker: Broker, topic: str, partition: int, needle: bytes) -> None:
    """Flip one byte of a record's value in the broker's log segment: its batch's CRC no longer matches."""
    segment = broker.data / f"{topic}-{partition}" / "00000000000000000000.log"
    data = bytearray(segment.read_bytes())
    at = data.index(needle)
    data[at] ^= 0x20
    with segment.open("r+b") as out:
        out.seek(at)
        out.write(data[at:at + 1])


def consumer_groups(broker: Broker, *args: str) -> str:
    return java_tool(
        broker, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--bootstrap-server", broker.bootstrap,
        *args,
    )


def test_a_corrupt_batch_stops_its_partition_only_and_the_runbook_gets_past_it(
    kafka: str, default_broker: Broker, topics: dict[str, str], start_worker: Callable[..., WorkerProcess],
) -> None:
    before, corrupt_batch, after = messages("BEFORE", 20), messages("CORRUPT", 10), messages("AFTER", 20)
    corrupt_batch = [(key, value.replace(b'"event_id":"', b'"event_id":"' + MARKER)) for key, value in corrupt_batch]
    others = messages("OTHER", 30)
    topic = topics["input"]
    produce_batches(kafka, topic, 0, [before, corrupt_batch, after])
    produce_batches(kafka, topic, 1, [others])
    corrupt(default_broker, topic, 0, MARKER)

    worker = start_worker(ready=False)  # it may meet the batch before it would first answer ready
    decisions_for(worker, before + others)  # what precedes the batch on its partition, and other partitions, go on

    def stopped() -> dict | None:
        status, body = worker.get("/readyz")
        report = orjson.loads(body)
        return report if status == 503 and "unreadable_batch" in report["reasons"] else None

    report = wait_for(stopped, "not ready for an unreadable batch", worker.tail_log)
    [found] = report["unreadable"]
    assert (found["topic"], found["partition"], found["offset"]) == (topic, 0, 20)
    assert "CorruptRecordException" in found["cause"]
    assert worker.get("/healthz")[0] == 200 and worker.process is not None and worker.process.poll() is None
    text = worker.metrics()
    assert sample(text, "compliance_unreadable_batch_offset", topic=topic, partition="0") == 20
    assert sample(text, "compliance_unreadable_batches_total", topic=topic, partition="0") == 1
    lines = [entry for entry in log_events(worker) if entry.get("event") == "unreadable_batch"]
    assert len(lines) == 1 and lines[0]["source"] == {"topic": topic, "partition": 0, "offset": 20}, lines

    # docs/runbook.md#complianceunreadablebatch: stop the group, move its offset past the batch, start again.
    worker.stop()
    consumer_groups(
        default_broker, "--group", worker.app_id, "--reset-offsets", "--topic", f"{topic}:0",
        "--to-offset", str(20 + len(corrupt_batch)), "--execute",
    )
    worker.start()
    worker.wait_ready()
    decisions_for(worker, after)
    assert worker.get("/readyz")[0] == 200
