"""The Kafka clients users really run, as the interop tests drive them: kcat (librdkafka) and Kafka's own Java tools."""

from __future__ import annotations

import functools
import glob
import os
import re
import subprocess
import time
import zipfile
from collections.abc import Sequence
from typing import NamedTuple
from pathlib import Path

import orjson

from tests.integration.conftest import Broker
from tests.tools import require_binary

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
# The Java tools log WARN and above to stderr (log4j 2's default configuration prints to stdout, into what they read).
TOOLS_LOG_CONFIG = Path(__file__).with_name("tools-log4j2.properties")
# KIP-1147 (Kafka 4.2) renamed the console tools' --property and --producer-property; from 4.2 on the old names
# print a deprecation notice, the console consumer's on stdout, and 3.9 knows only the old ones.
RENAMED_OPTIONS = (4, 2)


def kcat_produce(bootstrap: str, topic: str, messages: Sequence[tuple[str, str]], *extra: str) -> None:
    """`key<TAB>value` lines through ``kcat -P`` (librdkafka's defaults unless ``extra`` says otherwise), acks=all."""
    kcat = require_binary("kcat", "Debian package kcat; make test installs it")
    lines = "".join(f"{key}\t{value}\n" for key, value in messages)
    subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-X", "acks=all", *extra],
        input=lines, text=True, check=True, timeout=60, capture_output=True,
    )


def kcat_send(
    bootstrap: str, topic: str, key: str | None, value: str | None, headers: dict[str, str] | None = None,
) -> None:
    """One message through ``kcat -P``; a None key is a null key (``-K`` is then not given), a None value a
    tombstone (``-Z``: an empty value is sent as null)."""
    kcat = require_binary("kcat", "Debian package kcat; make test installs it")
    args = [kcat, "-P", "-b", bootstrap, "-t", topic, "-X", "acks=all", *(["-Z"] if value is None else [])]
    value = value or ""
    for name, header in (headers or {}).items():
        args += ["-H", f"{name}={header}"]
    line = value if key is None else f"{key}\t{value}"
    if key is not None:
        args += ["-K", "\t"]
    subprocess.run(args, input=line + "\n", text=True, check=True, timeout=60, capture_output=True)


def kcat_envelopes(bootstrap: str, topic: str, *extra: str) -> list[dict]:
    """The whole topic now, as ``kcat -C -J`` prints it: one JSON envelope (key, payload, partition, offset, headers)
    per record."""
    kcat = require_binary("kcat", "Debian package kcat; make test installs it")
    result = subprocess.run(
        [kcat, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-J", "-q", *extra],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]


def kcat_headers(envelope: dict) -> tuple[tuple[str, str], ...]:
    """An envelope's headers: kcat prints them as a flat [name, value, name, value, ...] list."""
    flat = envelope.get("headers") or []
    return tuple(zip(flat[::2], flat[1::2]))


def kcat_read(bootstrap: str, topic: str, until: int, timeout: float = 60.0) -> list[dict]:
    """The whole topic as kcat's JSON envelopes, once it holds ``until`` messages."""
    deadline = time.monotonic() + timeout
    while True:
        envelopes = kcat_envelopes(bootstrap, topic)
        if len(envelopes) >= until or time.monotonic() > deadline:
            return envelopes
        time.sleep(0.3)


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else require_binary("java", "Java 17+, which the broker needs too")


@functools.cache
def kafka_classes(libs: Path) -> frozenset[str]:
    """Every class name in the Kafka jars of ``libs``."""
    names: set[str] = set()
    for jar in libs.glob("kafka*.jar"):
        with zipfile.ZipFile(jar) as archive:
            names.update(name[:-6].replace("/", ".") for name in archive.namelist() if name.endswith(".class"))
    return frozenset(names)


def tool_class(broker: Broker, *candidates: str) -> str:
    """The main class of a Java tool in the broker's version: tools move from Scala's core (``kafka.tools``) to the
    Java tools module (``org.apache.kafka.tools``) over versions, so the caller names each place it has had."""
    found = [name for name in candidates if name in kafka_classes(broker.libs)]
    assert found, f"none of {candidates} in the Kafka {broker.version} jars in {broker.libs}"
    return found[0]


def renamed_options(broker: Broker) -> bool:
    """Whether the broker's console tools take KIP-1147's option names."""
    return tuple(int(part) for part in broker.version.split(".")) >= RENAMED_OPTIONS


def java_tool(
    broker: Broker, main_class: str, *args: str, stdin: str | None = None, timeout: float = 120.0,
    ok_exit_codes: tuple[int, ...] = (0,),
) -> str:
    """Run one of Kafka's own Java tools (the broker's version) and return what it printed; fail with its output."""
    tools = broker.libs / f"kafka-tools-{broker.version}.jar"
    assert tools.is_file(), f"no {tools.name} in {broker.libs} (scripts/kafka.sh fetches it)"
    result = subprocess.run(
        [java(), "-cp", f"{broker.libs}/*", f"-Dlog4j2.configurationFile={TOOLS_LOG_CONFIG}", main_class, *args],
        input=stdin, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode in ok_exit_codes, f"{main_class} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def java_console_produce(broker: Broker, topic: str, messages: Sequence[tuple[str, str]], codec: str = "none") -> None:
    """Kafka's console producer (the broker's version), `key<TAB>value` lines, acks=all, batches compressed with
    ``codec``.

    Its own ``--compression-codec`` decides: a ``compression.type`` producer property is overridden by it.
    """
    reader, producer = ("--reader-property", "--command-property") if renamed_options(broker) else (
        "--property", "--producer-property")
    args = ["--bootstrap-server", broker.bootstrap, "--topic", topic, reader, "parse.key=true",
            reader, "key.separator=\t", producer, "acks=all", "--compression-codec", codec]
    main = tool_class(broker, "org.apache.kafka.tools.ConsoleProducer", "kafka.tools.ConsoleProducer")
    java_tool(broker, main, *args, stdin="".join(f"{k}\t{v}\n" for k, v in messages))


def codecs_on_disk(broker: Broker, topic: str) -> set[str]:
    """The compression codecs of the record batches the broker stored for ``topic`` (Kafka's DumpLogSegments)."""
    segments = sorted(str(p) for p in broker.data.glob(f"{glob.escape(topic)}-*/*.log") if p.stat().st_size)
    assert segments, f"no log segments of {topic} under {broker.data}"
    main = tool_class(broker, "org.apache.kafka.tools.DumpLogSegments", "kafka.tools.DumpLogSegments")
    dump = java_tool(broker, main, "--files", ",".join(segments))
    return {match.lower() for match in re.findall(r"compresscodec: (\w+)", dump)}


class Read(NamedTuple):
    """One record as a downstream reader printed it: key, value and headers as text (None for null)."""

    key: str | None
    value: str | None
    headers: tuple[tuple[str, str], ...]


def kcat_consume(bootstrap: str, topic: str, isolation_level: str) -> list[Read]:
    """The whole topic through ``kcat -C`` (librdkafka) under ``isolation_level``, to its end now."""
    return [
        Read(envelope["key"], envelope["payload"], kcat_headers(envelope))
        for envelope in kcat_envelopes(bootstrap, topic, "-X", f"isolation.level={isolation_level}")
    ]


def java_console_consume(broker: Broker, topic: str, isolation_level: str, expected: int) -> list[Read]:
    """The topic through Kafka's own console consumer (kafka-tools, the broker's version), key and headers printed.

    It has no "stop at the end" option: it stops after ``expected`` records, or after 15 s without one (so a
    reader that sees fewer returns what it saw and the caller's assertion says what is missing).
    """
    formatter = "--formatter-property" if renamed_options(broker) else "--property"
    out = java_tool(
        broker, "org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server", broker.bootstrap,
        "--topic", topic, "--from-beginning", "--isolation-level", isolation_level, "--max-messages", str(expected),
        "--timeout-ms", "15000", formatter, "print.key=true", formatter, "print.headers=true",
        formatter, "key.separator=\t", formatter, "null.literal=\x01null\x01",
        ok_exit_codes=(0, 1),  # 1: the timeout ended it ("TimeoutException"), which is how it stops when idle
    )
    reads = []
    for line in out.splitlines():
        if not line:
            continue
        headers, key, value = line.split("\t", 2)
        pairs = () if headers == "NO_HEADERS" else tuple(
            tuple(pair.split(":", 1)) for pair in headers.split(",")  # type: ignore[misc]  # its default separators
        )
        reads.append(Read(None if key == "\x01null\x01" else key, None if value == "\x01null\x01" else value, pairs))
    return reads


def confluent_consume(bootstrap: str, topic: str, isolation_level: str, timeout: float = 60.0) -> list[Read]:
    """The whole topic through confluent-kafka's Python consumer (librdkafka), to each partition's end now."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{time.monotonic_ns()}", "enable.auto.commit": False,
        "isolation.level": isolation_level, "enable.partition.eof": True,
    })
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        reads = []
        deadline = time.monotonic() + timeout
        while len(at_end) < len(partitions):
            assert time.monotonic() < deadline, f"confluent-kafka did not reach the end of {topic}"
            message = consumer.poll(1.0)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error  # noqa: SLF001 - confluent-kafka's own name
                at_end.add(message.partition())
                continue
            at_end.discard(message.partition())
            key, value = message.key(), message.value()
            reads.append(Read(
                None if key is None else key.decode(), None if value is None else value.decode(),
                tuple((name, (header or b"").decode()) for name, header in (message.headers() or [])),
            ))
        return reads
    finally:
        consumer.close()
