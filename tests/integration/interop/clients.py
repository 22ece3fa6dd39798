"""The Kafka clients users really run, as the interop tests drive them: kcat (librdkafka) and Kafka's own Java tools."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from tests.integration.conftest import ROOT
from tests.tools import require_binary

# scripts/kafka.sh fetches these (kafka/pom.xml, the broker's version) before the session's broker starts.
JAVA_LIBS = ROOT / ".cache" / "kafka" / "libs"
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def kcat_produce(bootstrap: str, topic: str, messages: Sequence[tuple[str, str]], *extra: str) -> None:
    """`key<TAB>value` lines through ``kcat -P`` (librdkafka's defaults unless ``extra`` says otherwise), acks=all."""
    kcat = require_binary("kcat", "Debian package kcat; make test installs it")
    lines = "".join(f"{key}\t{value}\n" for key, value in messages)
    subprocess.run(
        [kcat, "-P", "-b", bootstrap, "-t", topic, "-K", "\t", "-X", "acks=all", *extra],
        input=lines, text=True, check=True, timeout=60, capture_output=True,
    )


def kcat_read(bootstrap: str, topic: str, until: int, timeout: float = 60.0) -> list[dict]:
    """The whole topic as kcat's JSON envelopes (key, payload, partition, offset), once it holds ``until`` messages."""
    kcat = require_binary("kcat", "Debian package kcat; make test installs it")
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            [kcat, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
            capture_output=True, text=True, check=True, timeout=60,
        )
        envelopes = [orjson.loads(line) for line in result.stdout.splitlines() if line.strip()]
        if len(envelopes) >= until or time.monotonic() > deadline:
            return envelopes
        time.sleep(0.3)


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else require_binary("java", "Java 17+, which the broker needs too")


def java_tool(main_class: str, *args: str, stdin: str | None = None, timeout: float = 120.0) -> str:
    """Run one of Kafka's own Java tools (the broker's version) and return what it printed; fail with its output."""
    assert any(JAVA_LIBS.glob("kafka-tools-*.jar")), f"no kafka-tools jar in {JAVA_LIBS} (scripts/kafka.sh fetches it)"
    result = subprocess.run(
        [java(), "-cp", f"{JAVA_LIBS}/*", "-Dlog4j2.level=WARN", main_class, *args],
        input=stdin, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, f"{main_class} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def java_console_produce(bootstrap: str, topic: str, messages: Sequence[tuple[str, str]], codec: str = "none") -> None:
    """Kafka's console producer, `key<TAB>value` lines, acks=all, batches compressed with ``codec``.

    Its own ``--compression-codec`` decides: a ``compression.type`` producer property is overridden by it.
    """
    args = ["--bootstrap-server", bootstrap, "--topic", topic, "--property", "parse.key=true",
            "--property", "key.separator=\t", "--producer-property", "acks=all", "--compression-codec", codec]
    java_tool("org.apache.kafka.tools.ConsoleProducer", *args, stdin="".join(f"{k}\t{v}\n" for k, v in messages))


def codecs_on_disk(broker_data: Path, topic: str) -> set[str]:
    """The compression codecs of the record batches the broker stored for ``topic`` (Kafka's DumpLogSegments)."""
    segments = sorted(str(p) for p in broker_data.glob(f"{glob.escape(topic)}-*/*.log") if p.stat().st_size)
    assert segments, f"no log segments of {topic} under {broker_data}"
    dump = java_tool("kafka.tools.DumpLogSegments", "--files", ",".join(segments))
    return {match.lower() for match in re.findall(r"compresscodec: (\w+)", dump)}


def broker_data_dir(bootstrap: str) -> Path:
    """Where the session's broker (tests/integration/conftest.py) keeps its log segments."""
    port = bootstrap.rsplit(":", 1)[1]
    data = ROOT / ".cache" / "kafka" / f"test-node-{port}" / "data"
    assert data.is_dir(), data
    return data
