"""`raw_aiokafka`: the plain batched loop with nothing but aiokafka - the ceiling for a Python client.

    getmany(max_records) -> Processor.process each -> appended to aiokafka batch builders (create_batch,
    send_batch as each fills: no per-record send) -> await the batch's deliveries (acks=all) -> commit the
    consumed offsets -> next batch

Same at-least-once contract as the worker (a batch is committed only after its outputs are acknowledged),
same decoding, policy and records; no Faust, no metrics, no web server. Its builders work as the worker's
worker/kafka/outbox.py does, written out here on purpose: `--code REV` runs older worker/ trees (some without an
outbox), and the ceiling must not move with the code under test. Where the Processor keeps
per-product state (since b567034), the state lives in a dict and every change is also written, with the
batch's outputs, to a compacted changelog topic GROUP-state-changelog partitioned like the input - the
same writes the worker's changelog-backed table makes. Runs until SIGTERM/SIGINT:

    python -m bench.raw_loop --bootstrap 127.0.0.1:9092 --input IN --decisions OUT --dead-letter DLQ --group G
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import signal
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner

from bench.changelog import ChangelogStore
from bench.compat import DEAD_LETTER, Processor
from worker.core import load_bundled_policy


class Announce(ConsumerRebalanceListener):
    """Says on stderr which partitions it got: the harness waits for this line before it starts a clock."""

    async def on_partitions_revoked(self, revoked: object) -> None:
        pass

    async def on_partitions_assigned(self, assigned: object) -> None:
        names = sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)  # type: ignore[attr-defined]
        sys.stderr.write(f"raw_loop: assigned {len(names)} partition(s): {' '.join(names)}\n")
        sys.stderr.flush()


async def create_changelog(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs={"cleanup.policy": "compact"})])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


async def run(args: argparse.Namespace) -> int:
    stateful = "state" in inspect.signature(Processor).parameters  # worker/ before b567034 keeps no state
    store = ChangelogStore() if stateful else None
    processor = Processor(load_bundled_policy(), store) if stateful else Processor(load_bundled_policy())
    process = processor.process
    changelog = f"{args.group}-state-changelog"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap, group_id=args.group, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=args.max_records,
        max_partition_fetch_bytes=4 << 20, fetch_max_bytes=64 << 20,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", linger_ms=5, max_batch_size=512 << 10,
        max_request_size=8 << 20,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await producer.start()
    if store is not None:
        await create_changelog(args.bootstrap, changelog, len(await producer.partitions_for(args.input)))
    await consumer.start()
    consumer.subscribe([args.input], listener=Announce())
    handled = 0
    partitioner = DefaultPartitioner()
    partitions = {
        topic: sorted(await producer.partitions_for(topic)) for topic in (args.decisions, args.dead_letter)
    }
    builders: dict[tuple[str, int], Any] = {}
    pending: list[Any] = []

    async def add(topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        if partition is None:  # as producer.send would pick it
            partition = partitioner(key, partitions[topic], partitions[topic])
        builder = builders.get((topic, partition))
        if builder is None:
            builder = builders[(topic, partition)] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None) is None:  # full: send it, start the next
            pending.append(await producer.send_batch(builder, topic, partition=partition))
            builder = builders[(topic, partition)] = producer.create_batch()
            builder.append(key=key, value=value, timestamp=None)  # an empty batch takes any one record

    try:
        decisions, dead_letters = args.decisions, args.dead_letter
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=args.max_records)
            if not batches:
                continue
            now = time.time()
            for messages in batches.values():
                for m in messages:
                    outcome = process(m.key, m.value, m.topic, m.partition, m.offset, now)
                    await add(dead_letters if outcome.kind is DEAD_LETTER else decisions, outcome.key, outcome.value)
            if store is not None:
                for key, value, partition in store.writes:
                    await add(changelog, key, value, partition)
                store.writes.clear()
            for (topic, partition), builder in builders.items():
                if builder.record_count():
                    builder.close()  # complete: sent without waiting out linger_ms, as the worker's outbox does
                    pending.append(await producer.send_batch(builder, topic, partition=partition))
            builders.clear()
            await asyncio.gather(*pending)  # every output and state change acknowledged (acks=all) ...
            pending.clear()
            await consumer.commit()  # ... before the batch's offsets are committed
            handled += sum(len(messages) for messages in batches.values())
    finally:
        await consumer.stop()
        await producer.stop()
        sys.stderr.write(f"raw_loop: handled {handled} events\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--decisions", required=True)
    parser.add_argument("--dead-letter", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--max-records", type=int, default=2000)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
