"""A real Apache Kafka broker of the project's default version for the test session, and a real worker per test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from tests.integration.kafka import create_topics
from tests.tools import IN_CI

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka.sh"
TEST_STATE = ROOT / ".cache" / "test-state"  # the workers' STATE_DIRs, one per worker of a test; emptied per session
KAFKA_POM = ROOT / "kafka" / "pom.xml"


def default_kafka_version() -> str:
    """``kafka.version`` in kafka/pom.xml: the broker scripts/kafka.sh runs unless KAFKA_VERSION says otherwise."""
    version = ElementTree.parse(KAFKA_POM).getroot().findtext(
        "m:properties/m:kafka.version", namespaces={"m": "http://maven.apache.org/POM/4.0.0"}
    )
    assert version, f"no kafka.version in {KAFKA_POM}"
    return version


DEFAULT_KAFKA_VERSION = default_kafka_version()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def test_state() -> Iterator[Path]:
    """The workers' local state of this session, under the project's cache; gone afterwards."""
    shutil.rmtree(TEST_STATE, ignore_errors=True)
    yield TEST_STATE
    shutil.rmtree(TEST_STATE, ignore_errors=True)


@dataclass(frozen=True)
class Broker:
    """A running single-node broker from scripts/kafka.sh: its version, address, state directory and the jars
    (broker and Kafka's Java tools) of that version."""

    version: str
    bootstrap: str
    home: Path
    libs: Path

    @property
    def data(self) -> Path:
        """Where it keeps its log segments."""
        return self.home / "data"


@contextmanager
def started_broker(version: str, port: int | None = None) -> Iterator[Broker]:
    """A fresh single-node KRaft broker of Apache Kafka ``version`` on free ports (so sessions and versions never
    collide); stopped and removed at the end."""
    port = port or free_port()
    home = ROOT / ".cache" / "kafka" / f"test-node-{port}"
    env = {
        **os.environ, "KAFKA_VERSION": version, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_HOME_DIR": str(home),
    }
    subprocess.run([str(KAFKA_SCRIPT), "down"], env=env, check=False, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)
    started = subprocess.run([str(KAFKA_SCRIPT), "up"], env=env, capture_output=True, text=True)
    if started.returncode != 0:
        message = f"the test Kafka {version} broker did not start:\n{started.stdout}\n{started.stderr}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    sys.stderr.write(started.stdout)
    try:
        libs = subprocess.run([str(KAFKA_SCRIPT), "libs"], env=env, capture_output=True, text=True, check=True)
        yield Broker(version, f"127.0.0.1:{port}", home, Path(libs.stdout.strip()))
    finally:
        subprocess.run([str(KAFKA_SCRIPT), "down"], env=env, check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def default_broker() -> Iterator[Broker]:
    """The session's broker of the project's default version (kafka/pom.xml)."""
    with started_broker(DEFAULT_KAFKA_VERSION, int(os.environ.get("TEST_KAFKA_PORT") or 0)) as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka(default_broker: Broker) -> str:
    """The bootstrap address of the session's broker (tests/integration/interop overrides it: one per version)."""
    return default_broker.bootstrap


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkerProcess:
    """A `compliance-worker worker` subprocess with its own topics, group and web port."""

    bootstrap: str
    input_topic: str
    decisions_topic: str
    dead_letter_topic: str
    web_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    # Its own STATE_DIR, kept across restarts of this process (local state survives them, as on a pod's volume).
    state_dir: Path = field(default_factory=lambda: TEST_STATE / uuid.uuid4().hex[:12])

    @classmethod
    def on(cls, bootstrap: str, topics: Mapping[str, str], log_path: Path) -> WorkerProcess:
        """A worker on a test's topics (keys ``input``, ``decisions``, ``dead_letter``), with a free web port."""
        return cls(bootstrap, topics["input"], topics["decisions"], topics["dead_letter"], free_port(), log_path)

    @property
    def app_id(self) -> str:
        """The Faust app id, which is also the consumer group."""
        return f"cw-{self.input_topic}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "POLICY_", "WORKER_", "STATE_"))}
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "INPUT_TOPIC": self.input_topic,
            "DECISIONS_TOPIC": self.decisions_topic,
            "DEAD_LETTER_TOPIC": self.dead_letter_topic,
            "APP_ID": self.app_id,
            "WORKER_WEB_PORT": str(self.web_port),
            "WORKER_WEB_HOST": "127.0.0.1",
            "LOG_FORMAT": "json",
            "STATE_DIR": str(self.state_dir),
        })
        env.update(extra)
        return env

    def start(self, **env: str) -> None:
        executable = Path(sys.executable).with_name("compliance-worker")
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(executable), "worker"], env=self.env(**env), stdout=self._log, stderr=self._log
        )

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def wait_ready(self, timeout: float = 60.0) -> dict:
        """Poll /readyz until it answers 200 (its first recovery after start is done), failing early if it dies."""
        return self._wait_readyz(lambda body: True, "ready", timeout)

    def wait_settled(self, timeout: float = 60.0) -> dict:
        """Poll /readyz until it answers 200 with no rebalance or recovery under way (a later one included)."""
        return self._wait_readyz(lambda body: not body["rebalancing"] and not body["recovering"], "settled", timeout)

    def _wait_readyz(self, done: Callable[[dict], bool], what: str, timeout: float) -> dict:
        import orjson

        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"worker exited with {self.process.returncode}; log:\n{self.tail_log()}", pytrace=False)
            try:
                status, body = self.get("/readyz")
                last = body
                if status == 200 and done(answer := orjson.loads(body)):
                    return answer
            except OSError as error:
                last = error
            time.sleep(0.2)
        pytest.fail(f"worker not {what} after {timeout}s (last: {last!r}); log:\n{self.tail_log()}", pytrace=False)

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200
        return body.decode()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; the exit code, or None if it had to be killed."""
        try:
            if self.process is None or self.process.poll() is not None:
                return None if self.process is None else self.process.returncode
            self.process.terminate()
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                return None
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def tail_log(self, lines: int = 60) -> str:
        """The log's last ``lines``, then its error lines with their tracebacks (a crash's reason is often earlier)."""
        if not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) + error_lines(text)


@pytest.fixture
def topics(kafka: str) -> dict[str, str]:
    """Unique input, decisions and dead-letter topics for one test (4 partitions each)."""
    suffix = uuid.uuid4().hex[:10]
    names = {
        "input": f"it-{suffix}.product-upserts",
        "decisions": f"it-{suffix}.decisions",
        "dead_letter": f"it-{suffix}.dead-letter",
    }
    create_topics(kafka, list(names.values()), partitions=4)
    return names


@pytest.fixture
def worker(kafka: str, topics: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    """A ready worker on this test's topics (tests put `worker.tail_log()` in their failure messages)."""
    process = WorkerProcess.on(kafka, topics, tmp_path / "worker.log")
    process.start()
    process.wait_ready()
    yield process
    process.stop()


@pytest.fixture
def policy_topic(topics: dict[str, str]) -> str:
    return f"{topics['input']}.policies"


@pytest.fixture
def start_worker(
    kafka: str, topics: dict[str, str], policy_topic: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts workers on this test's topics and policy topic (same group), each on its own web port; stops them all."""
    started: list[WorkerProcess] = []

    def start(name: str = "worker", *, ready: bool = True, **env: str) -> WorkerProcess:
        process = WorkerProcess.on(kafka, topics, tmp_path / f"{name}.log")
        process.start(POLICY_TOPIC=policy_topic, **env)
        started.append(process)
        if ready:
            process.wait_ready()
        return process

    yield start
    for process in started:
        process.stop()


def error_lines(lines: list[str], most: int = 12) -> str:
    """The first ``most`` error and critical lines of a JSON log, each with its traceback unescaped; "" if none."""
    import orjson

    found = []
    for line in lines:
        if '"level":"error"' not in line and '"level":"critical"' not in line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            found.append(line)
            continue
        found.append(f"{record.get('time')} {record.get('logger')}: {record.get('message')}")
        if record.get("exception"):
            found.append(record["exception"])
        if len(found) >= most:
            break
    return "\n--- error lines:\n" + "\n".join(found) if found else ""
