"""`naive_faust`: the textbook Faust agent - one event at a time, one awaited send per event - the baseline.

Faust's defaults everywhere (at-least-once, commit interval, buffers, producer), raw bytes in and out,
the same Processor as the worker. Where the Processor keeps per-product state (since b567034), it is a
textbook Faust table (`table[key] = value`, changelog-backed, co-partitioned with the input), as the
worker's is. Configured from the worker's environment variables (KAFKA_BOOTSTRAP_SERVERS, INPUT_TOPIC,
DECISIONS_TOPIC, DEAD_LETTER_TOPIC, APP_ID, WORKER_WEB_PORT), BENCH_INPUT_PARTITIONS (for the table) and
BENCH_DATADIR for Faust's data directory:

    python -m bench.naive_app          (or: faust -A bench.naive_app worker)
"""

from __future__ import annotations

import inspect
import os
import tempfile
import time
from pathlib import Path

import faust

from bench.compat import DEAD_LETTER, Processor
from worker.core import load_bundled_policy

env = os.environ
app = faust.App(
    env.get("APP_ID", "bench-naive-faust"),
    broker=[f"kafka://{server.strip()}" for server in env.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092").split(",")],
    key_serializer="raw",
    value_serializer="raw",
    web_port=int(env.get("WORKER_WEB_PORT", "6067")),
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    datadir=Path(env.get("BENCH_DATADIR") or tempfile.mkdtemp(prefix="bench-naive-faust-")),
    autodiscover=False,
    store="memory://",
)
input_topic = app.topic(env.get("INPUT_TOPIC", "catalog.product-upserts"))
decisions_topic = app.topic(env.get("DECISIONS_TOPIC", "compliance.decisions"))
dead_letter_topic = app.topic(env.get("DEAD_LETTER_TOPIC", "compliance.dead-letter"))


class TableStore:
    """The Processor's state store on a Faust table, used the textbook way."""

    def __init__(self, table: faust.Table) -> None:
        self.table = table

    def get(self, key: bytes, partition: int = 0) -> bytes | None:  # older worker trees ask by key alone
        return self.table.get(key)

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        self.table[key] = value  # Faust writes the changelog to the current event's partition

    def delete(self, key: bytes, partition: int) -> None:
        self.table.pop(key, None)


if "state" in inspect.signature(Processor).parameters:
    state_table = app.Table("product-state", partitions=int(env.get("BENCH_INPUT_PARTITIONS", "4")))
    processor = Processor(load_bundled_policy(), TableStore(state_table))
else:  # worker/ before b567034 keeps no per-product state
    processor = Processor(load_bundled_policy())


@app.agent(input_topic)
async def decide(stream: faust.StreamT) -> None:
    async for event in stream.events():
        message = event.message
        outcome = processor.process(
            message.key, message.value, message.topic, message.partition, message.offset, time.time()
        )
        target = dead_letter_topic if outcome.kind is DEAD_LETTER else decisions_topic
        await target.send(key=outcome.key, value=outcome.value)


def main() -> None:
    worker = faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
