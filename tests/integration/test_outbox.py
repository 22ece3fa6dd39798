"""The Outbox on a real broker: the same records, partitions and order as AIOKafkaProducer.send, per batch."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaProducer

from tests.integration.kafka import consume, create_topics
from worker.kafka.outbox import Outbox


def _records(count: int) -> list[tuple[bytes | None, bytes | None]]:
    # Keys repeat (a product's decisions must stay in order), one record is far larger than a producer batch,
    # and there are keyless records and a tombstone.
    records: list[tuple[bytes | None, bytes | None]] = [
        (f"product-{i % 97}".encode(), f'{{"n":{i}}}'.encode()) for i in range(count)
    ]
    records[10] = (b"product-big", b"x" * 300_000)
    records[11] = (None, b'{"keyless":1}')
    records[12] = (b"product-gone", None)
    return records


def _send_both(bootstrap: str, by_send: str, by_outbox: str, records: list[tuple[bytes | None, bytes | None]],
               fixed_partition_topic: str) -> int:
    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=16_384,
                                    max_request_size=1 << 20)
        await producer.start()
        try:
            outbox = Outbox(lambda: producer)
            sent = [await producer.send(by_send, value, key=key) for key, value in records]
            # As the agent adds: without a wait where it can (append), awaiting add where it must.
            appended = 0
            for key, value in records:
                if outbox.append(by_outbox, key, value):
                    appended += 1
                else:
                    await outbox.add(by_outbox, key, value)
            for index, (key, value) in enumerate(records):
                if outbox.append(fixed_partition_topic, key, value, index % 2):
                    appended += 1
                else:
                    await outbox.add(fixed_partition_topic, key, value, partition=index % 2)
            # Most records need no wait; the first of the keyed topic (partitions unknown) and full builders do.
            assert len(records) < appended < 2 * len(records)
            deliveries = await outbox.flush()
            await asyncio.gather(*sent, *deliveries)
            assert await outbox.flush() == []  # nothing left over for the next batch
            await outbox.add(by_outbox, b"product-failed", b"never sent")  # a batch that failed half-way
            outbox.discard()
            assert await outbox.flush() == []
            return len(deliveries)
        finally:
            await producer.stop()

    return asyncio.run(run())


def test_outbox_writes_what_send_would_in_the_same_partitions_and_order(kafka: str) -> None:
    suffix = uuid.uuid4().hex[:10]
    by_send, by_outbox, fixed = f"it-{suffix}.send", f"it-{suffix}.outbox", f"it-{suffix}.fixed"
    create_topics(kafka, [by_send, by_outbox, fixed], partitions=4)
    records = _records(3000)

    deliveries = _send_both(kafka, by_send, by_outbox, records, fixed)

    # ~3,000 records of ~20 bytes plus one of 300 kB in 16 kB batches over 4 partitions: many batches, not one each.
    assert deliveries > 8
    sent = consume(kafka, by_send, len(records))
    written = consume(kafka, by_outbox, len(records))
    assert len(written) == len(records)  # and not the discarded record

    def keyed_by_partition(rows: list) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
        out: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        for row in sorted(rows, key=lambda r: (r.partition, r.offset)):
            if row.key is not None:  # a keyless record's partition is chosen at random, by send too
                out.setdefault(row.partition, []).append((row.key, row.value))
        return out

    assert keyed_by_partition(written) == keyed_by_partition(sent)
    assert [(r.key, r.value) for r in written if r.key is None] == [(None, b'{"keyless":1}')]

    explicit = consume(kafka, fixed, len(records))
    assert {r.partition for r in explicit} == {0, 1}
    for partition in (0, 1):
        got = [(r.key, r.value) for r in sorted(explicit, key=lambda r: r.offset) if r.partition == partition]
        assert got == records[partition::2]
