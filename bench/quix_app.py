"""`quix_streams`: the decisions as a Quix Streams application, state in its RocksDB store - the library a user might pick.

    app.dataframe(input) -> apply(decide, stateful=True) -> to_topic(decisions or dead letters, key=the outcome's)

The same Processor, decoding, policy and records as the worker; at-least-once (Quix's default guarantee: outputs
and changelog records flushed, then offsets committed, at each checkpoint). Where the Processor keeps per-product
state (since b567034), its StateStore is Quix's `State` of the message being processed: RocksDB on disk under
--state-dir, backed by the changelog topic Quix creates itself (changelog__GROUP--INPUT--default, compacted,
partitioned like the input). Quix scopes State to the message key; the worker enforces key == product.id, so one
product's state is one key's. Settings are Quix's defaults except where its docs point a throughput-minded user
(each one says where). Runs until SIGTERM/SIGINT (Quix's own handlers: the last checkpoint is committed):

    python -m bench.quix_app --bootstrap 127.0.0.1:9092 --input IN --decisions OUT --dead-letter DLQ --group G \
        --state-dir DIR
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from typing import Any

from quixstreams import Application, State, message_context
from quixstreams.models.serializers import SerializationContext, Serializer

from bench.compat import DEAD_LETTER, Processor
from worker.core import load_bundled_policy


class QuixStateStore:
    """The Processor's StateStore on Quix's State of the message being processed (set before each call)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: State | None = None

    def get(self, key: bytes, partition: int = 0) -> bytes | None:  # older worker trees ask by key alone
        return self.state.get_bytes(key)  # type: ignore[union-attr]

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        # get_bytes/set_bytes: the state is already bytes (the worker's encoding); Quix's default JSON serializer
        # would refuse bytes (docs/advanced/stateful-processing.md, "Serialization").
        self.state.set_bytes(key, value)  # type: ignore[union-attr]

    def delete(self, key: bytes, partition: int) -> None:
        self.state.delete(key)  # type: ignore[union-attr]


class OutcomeValue(Serializer):
    """An outcome's record as the Processor encoded it (None for a tombstone)."""

    def __call__(self, value: Any, ctx: SerializationContext) -> bytes | None:
        return value.value  # type: ignore[no-any-return]


def build(args: argparse.Namespace) -> Application:
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        # configuration.md: the default "latest" would skip the input, which is written before the app starts.
        auto_offset_reset="earliest",
        # configuration.md / advanced/checkpointing.md: a checkpoint (changelog records produced, producer flushed,
        # offsets committed, RocksDB written) every commit_interval seconds. Longer means less IO but more state
        # updates held in memory and more duplicates after a crash; the default 5 s is kept (commit_every=0).
        commit_interval=5.0,
        state_dir=args.state_dir,
        # configuration.md "Advanced Kafka Configuration": librdkafka settings passed through.
        producer_extra_config={
            # librdkafka's INTRODUCTION.md, "Performance": linger.ms is the main throughput setting; a higher one
            # makes fewer, larger produce requests (librdkafka's default is 5 ms).
            "linger.ms": 20,
        },
        consumer_extra_config={
            # Fetch as much as the hand-written loops do (4 MiB per partition, 64 MiB per request).
            "max.partition.fetch.bytes": 4 << 20, "fetch.max.bytes": 64 << 20,
        },
        loglevel="INFO",
    )
    input_topic = app.topic(args.input, key_deserializer="bytes", value_deserializer="bytes")
    decisions = app.topic(args.decisions, key_serializer="bytes", value_serializer=OutcomeValue())
    dead_letters = app.topic(args.dead_letter, key_serializer="bytes", value_serializer=OutcomeValue())

    stateful = "state" in inspect.signature(Processor).parameters  # worker/ before b567034 keeps no state
    store = QuixStateStore()
    processor = Processor(load_bundled_policy(), store) if stateful else Processor(load_bundled_policy())
    process = processor.process

    def decide(value: bytes | None, key: bytes | None, timestamp: int, headers: Any, state: State | None = None) -> Any:
        store.state = state
        context = message_context()
        return process(key, value, context.topic, context.partition, context.offset, time.time())

    sdf = app.dataframe(input_topic)
    sdf = sdf.apply(decide, stateful=True, metadata=True) if stateful else sdf.apply(decide, metadata=True)
    sdf.to_topic(
        lambda outcome, key, timestamp, headers: dead_letters if outcome.kind is DEAD_LETTER else decisions,
        key=lambda outcome: outcome.key,
    )
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--decisions", required=True)
    parser.add_argument("--dead-letter", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", required=True)
    build(parser.parse_args(argv)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
