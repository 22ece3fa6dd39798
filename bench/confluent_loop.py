"""`confluent_raw`: the plain batched loop with nothing but confluent-kafka (librdkafka) - what a user would write by hand.

    consume(num_messages) -> Processor.process each -> produce every output and state change (librdkafka batches
    them: linger.ms, batch.size) -> flush (every delivery acknowledged, acks=all) -> commit the consumed offsets
    (synchronously) -> next batch

The same at-least-once contract, decoding, policy, records and changelog writes as bench/raw_loop.py: where the
Processor keeps per-product state (since b567034), the state lives in a dict and every change is also written,
with the batch's outputs, to a compacted changelog topic GROUP-state-changelog partitioned like the input, on the
input partition of its event. Outputs are keyed by the Processor's key and partitioned as Kafka's Java client and
aiokafka partition (murmur2), so a key lands on the partition it lands on from the worker. Runs until
SIGTERM/SIGINT:

    python -m bench.confluent_loop --bootstrap 127.0.0.1:9092 --input IN --decisions OUT --dead-letter DLQ --group G
"""

from __future__ import annotations

import argparse
import inspect
import signal
import sys
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from bench.changelog import ChangelogStore
from bench.compat import DEAD_LETTER, Processor
from worker.core import load_bundled_policy


def create_changelog(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [future] = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config={"cleanup.policy": "compact"})]
    ).values()
    try:
        future.result(30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def input_partitions(consumer: Consumer, topic: str) -> int:
    metadata = consumer.list_topics(topic, timeout=30)
    partitions = metadata.topics[topic].partitions
    if not partitions:
        raise SystemExit(f"confluent_loop: topic {topic} has no partitions ({metadata.topics[topic].error})")
    return len(partitions)


def run(args: argparse.Namespace) -> int:
    stateful = "state" in inspect.signature(Processor).parameters  # worker/ before b567034 keeps no state
    store = ChangelogStore() if stateful else None
    processor = Processor(load_bundled_policy(), store) if stateful else Processor(load_bundled_policy())
    process = processor.process
    changelog = f"{args.group}-state-changelog"
    failures: list[str] = []

    def delivered(error: KafkaError | None, message: Any) -> None:
        if error is not None:  # only failures are reported (delivery.report.only.error)
            failures.append(f"{message.topic()}[{message.partition()}]: {error}")

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # Fetch as much as raw_loop does (4 MiB per partition, 64 MiB per request).
        "max.partition.fetch.bytes": 4 << 20, "fetch.max.bytes": 64 << 20,
    })
    producer = Producer({
        "bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 5, "batch.size": 512 << 10,
        "message.max.bytes": 8 << 20,
        "partitioner": "murmur2_random",  # Kafka's Java client's (and aiokafka's) key -> partition mapping
        "on_delivery": delivered, "delivery.report.only.error": True,
    })
    stop: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, frame: stop.append(number))
    if store is not None:
        create_changelog(args.bootstrap, changelog, input_partitions(consumer, args.input))

    def announce(_: Consumer, assigned: list[Any]) -> None:
        names = sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
        sys.stderr.write(f"confluent_loop: assigned {len(names)} partition(s): {' '.join(names)}\n")
        sys.stderr.flush()

    consumer.subscribe([args.input], on_assign=announce)
    handled = 0
    produce = producer.produce
    decisions, dead_letters = args.decisions, args.dead_letter
    try:
        while not stop:
            messages = consumer.consume(num_messages=args.max_records, timeout=0.1)
            if not messages:
                continue
            now = time.time()
            for m in messages:
                if m.error() is not None:
                    raise KafkaException(m.error())
                outcome = process(m.key(), m.value(), m.topic(), m.partition(), m.offset(), now)
                produce(dead_letters if outcome.kind is DEAD_LETTER else decisions, outcome.value, outcome.key)
            if store is not None:
                for key, value, partition in store.writes:
                    produce(changelog, value, key, partition)
                store.writes.clear()
            if producer.flush(60) or failures:  # every output and state change acknowledged (acks=all) ...
                raise SystemExit(f"confluent_loop: outputs not delivered: {failures[:5] or 'flush timed out'}")
            consumer.commit(asynchronous=False)  # ... before the batch's offsets are committed
            handled += len(messages)
    finally:
        consumer.close()
        producer.flush(30)
        sys.stderr.write(f"confluent_loop: handled {handled} events\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--decisions", required=True)
    parser.add_argument("--dead-letter", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--max-records", type=int, default=2000)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
