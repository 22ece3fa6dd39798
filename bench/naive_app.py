"""`naive_faust`: the textbook Faust agent - one event at a time, one awaited send per event - the baseline.

Faust's defaults everywhere (at-least-once, commit interval, buffers, producer), raw bytes in and out,
the same Processor as the worker. Configured from the worker's environment variables
(KAFKA_BOOTSTRAP_SERVERS, INPUT_TOPIC, DECISIONS_TOPIC, DEAD_LETTER_TOPIC, APP_ID, WORKER_WEB_PORT) and
BENCH_DATADIR for Faust's data directory:

    python -m bench.naive_app          (or: faust -A bench.naive_app worker)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import faust

from worker.core import load_bundled_policy
from worker.processing import DEAD_LETTER, Processor

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
)
input_topic = app.topic(env.get("INPUT_TOPIC", "catalog.product-upserts"))
decisions_topic = app.topic(env.get("DECISIONS_TOPIC", "compliance.decisions"))
dead_letter_topic = app.topic(env.get("DEAD_LETTER_TOPIC", "compliance.dead-letter"))
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
