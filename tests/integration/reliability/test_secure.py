"""TLS and SASL/SCRAM-SHA-512 on a real broker with certificates made here: secrets never shown, refusals one clear line."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.certs import Issued, issue, make_ca
from tests.integration.conftest import KAFKA_SCRIPT, ROOT, WorkerProcess, free_port
from tests.integration.kafka import Record, valid_and_malformed
from tests.tools import IN_CI
from worker.core.policy import BUNDLED_POLICY
from worker.commands.sample import generate

WORKER = str(Path(sys.executable).with_name("compliance-worker"))
USER = "compliance-worker"
POLICY_FILE = ROOT / "worker" / "policies" / BUNDLED_POLICY


@dataclass(frozen=True)
class SecureBroker:
    """One KRaft node: PLAINTEXT only for itself (controller, readiness), clients on SASL_SSL or mutual TLS."""

    plaintext: str
    sasl_ssl: str  # SCRAM-SHA-512 over TLS; no client certificate asked for
    mtls: str  # TLS that requires a client certificate signed by the CA
    ca: Issued
    other_ca: Issued  # signed nothing the broker uses: trusting only it must fail
    client: Issued  # client certificate with an encrypted key
    password: str  # USER's SCRAM password


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    directory = tmp_path_factory.mktemp("secure-kafka")
    ca, other_ca = make_ca(directory, "test-ca"), make_ca(directory, "other-ca")
    server = issue(ca, directory, "broker")  # for 127.0.0.1 and localhost
    client = issue(ca, directory, "worker-client", key_password=f"keypass-{token_hex(8)}")
    password = f"scram-{token_hex(12)}"
    port, controller, sasl_port, mtls_port = _free_ports(4)
    properties = directory / "secure.properties"
    # Appended to kafka.sh's server.properties; a later key wins, so the listener keys are restated in full.
    properties.write_text(
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},"
        f"SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{mtls_port}\n"
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{mtls_port}\n"
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL\n"
        "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN\n"
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
        # PLAIN too: aiokafka's debug log prints a PLAIN request's bytes, password included, unless the worker scrubs it
        "listener.name.sasl_ssl.plain.sasl.jaas.config="
        f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{USER}="{password}";\n'
        f"ssl.keystore.type=PEM\nssl.keystore.location={server.bundle}\n"
        f"ssl.truststore.type=PEM\nssl.truststore.location={ca.cert}\n"
        "listener.name.ssl.ssl.client.auth=required\n"
    )
    home = ROOT / ".cache" / "kafka" / f"secure-node-{port}"
    env = {
        **os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller), "KAFKA_HOME_DIR": str(home),
        "KAFKA_EXTRA_PROPERTIES": str(properties),
        # SCRAM credentials live in the cluster metadata: written once, when the storage is formatted.
        "KAFKA_FORMAT_ARGS": f"--add-scram SCRAM-SHA-512=[name={USER},password={password}]",
    }
    shutil.rmtree(home, ignore_errors=True)
    started_at = time.monotonic()
    started = subprocess.run([str(KAFKA_SCRIPT), "up"], env=env, capture_output=True, text=True)
    try:
        if started.returncode != 0:
            message = f"the SASL_SSL test broker did not start:\n{started.stdout}\n{started.stderr}"
            if IN_CI:
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        sys.stderr.write(f"secure broker ready in {time.monotonic() - started_at:.1f}s: {started.stdout}")
        yield SecureBroker(
            f"127.0.0.1:{port}", f"127.0.0.1:{sasl_port}", f"127.0.0.1:{mtls_port}", ca, other_ca, client, password,
        )
    finally:
        subprocess.run([str(KAFKA_SCRIPT), "down"], env=env, check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


# --- the test's own clients: stdlib TLS and aiokafka, independent of worker.kafka.security ----------


def sasl_options(broker: SecureBroker) -> dict[str, Any]:
    return {
        "security_protocol": "SASL_SSL", "ssl_context": ssl.create_default_context(cafile=str(broker.ca.cert)),
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": USER, "sasl_plain_password": broker.password,
    }


def mtls_options(broker: SecureBroker, with_certificate: bool = True) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(broker.ca.cert))
    if with_certificate:
        context.load_cert_chain(broker.client.cert, broker.client.key, password=broker.client.key_password)
    return {"security_protocol": "SSL", "ssl_context": context}


def produce(bootstrap: str, options: dict[str, Any], topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **options)
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in messages])
        finally:
            await producer.stop()

    asyncio.run(run())


def consume(bootstrap: str, options: dict[str, Any], topic: str, expected: int, timeout: float = 90.0) -> list[Record]:
    """Read ``topic`` from the start until ``expected`` records arrived (or the deadline), then 1 s more for extras."""

    async def run() -> list[Record]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, **options
        )
        await consumer.start()
        records: list[Record] = []
        try:
            deadline, settle_until = time.monotonic() + timeout, None
            while time.monotonic() < deadline and (settle_until is None or time.monotonic() < settle_until):
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(Record(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in batch)
                if settle_until is None and len(records) >= expected:
                    settle_until = time.monotonic() + 1.0
            return records
        finally:
            await consumer.stop()

    return asyncio.run(run())


@dataclass
class BoundWorker(WorkerProcess):
    """A worker whose web endpoints are reached at ``host`` (WorkerProcess assumes 127.0.0.1)."""

    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.web_port}"


def new_worker(bootstrap: str, tmp_path: Path, host: str = "127.0.0.1") -> BoundWorker:
    suffix = uuid.uuid4().hex[:10]
    # Topics are not created here: the worker creates them over the secured listener (its admin client).
    return BoundWorker(
        bootstrap, f"sec-{suffix}.in", f"sec-{suffix}.decisions", f"sec-{suffix}.dead", free_port(),
        tmp_path / "worker.log", host=host,
    )


def decide_events(worker: WorkerProcess, options: dict[str, Any], seed: int) -> tuple[int, int]:
    """Produce a sample over the secured listener; every event comes back as a decision or a dead letter."""
    messages = list(generate(400, seed=seed, malformed_ratio=0.02))
    valid, malformed = valid_and_malformed(messages)
    invalid = sum(malformed.values())
    assert valid and invalid
    produce(worker.bootstrap, options, worker.input_topic, messages)
    decisions = consume(worker.bootstrap, options, worker.decisions_topic, len(valid))
    dead_letters = consume(worker.bootstrap, options, worker.dead_letter_topic, invalid)
    assert sorted(orjson.loads(r.value)["event_id"] for r in decisions) == sorted(valid), worker.tail_log()
    assert len(dead_letters) == invalid, worker.tail_log()
    return len(decisions), len(dead_letters)


def assert_never_shown(worker: WorkerProcess, *secrets: str) -> dict[str, int]:
    """None of ``secrets`` in /metrics, /healthz, /readyz (as served now) or anywhere in the log; sizes checked."""
    seen: dict[str, int] = {}
    for path in ("/metrics", "/healthz", "/readyz"):
        status, body = worker.get(path)
        assert status == 200, (path, status, body)
        seen[path] = len(body)
        for secret in secrets:
            assert secret.encode() not in body, f"a secret is served on {path}"
    log = worker.log_path.read_bytes()
    seen["log"] = len(log)
    for secret in secrets:
        assert secret.encode() not in log, "a secret is in the worker's log"
    return seen


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_worker_decides_over_sasl_ssl_with_its_password_in_a_file(
    broker: SecureBroker, tmp_path: Path, record_property: pytest.RecordProperty, mechanism: str
) -> None:
    password_file = tmp_path / "kafka-password"
    password_file.write_text(broker.password + "\n")  # as `echo` or a secret mount writes it
    worker = new_worker(broker.sasl_ssl, tmp_path)
    started = time.monotonic()
    worker.start(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SSL_CA_FILE=str(broker.ca.cert), KAFKA_SASL_MECHANISM=mechanism,
        KAFKA_SASL_USERNAME=USER, KAFKA_SASL_PASSWORD_FILE=str(password_file),
        LOG_LEVEL="debug",  # aiokafka then logs every request, SASL ones included
    )
    try:
        ready = worker.wait_ready(timeout=120)
        to_ready = time.monotonic() - started
        assert ready["assigned_partitions"] == [0, 1, 2, 3]
        decided, dead = decide_events(worker, sasl_options(broker), seed=71)
        sizes = assert_never_shown(worker, broker.password)
    finally:
        code = worker.stop()
    assert code == 0, worker.tail_log()
    log = worker.log_path.read_text(errors="replace")
    assert broker.password not in log
    # The secured path was really taken, and the start line shows the password only as a placeholder.
    assert f"Authenticated as {USER} via {mechanism}" in log
    assert '"kafka_security_protocol":"SASL_SSL"' in log.replace(" ", "")
    assert '"kafka_sasl_password":"<redacted>"' in log.replace(" ", "")
    requests = [line for line in log.splitlines() if "SaslAuthenticateRequest" in line]
    assert requests, "debug logging of requests was on, so the absence above means something"
    if mechanism == "PLAIN":
        # A PLAIN request carries the password itself: each one was logged, scrubbed.
        assert all("<redacted>" in line for line in requests), requests[:3]
    record_property(f"sasl_ssl_{mechanism}_start_to_ready_seconds", round(to_ready, 1))
    print(f"\nSASL_SSL {mechanism} worker: ready in {to_ready:.1f}s, {decided} decisions + {dead} dead letters; "
          f"password absent from {sizes['log']:,} bytes of debug log ({len(requests)} SASL requests logged) "
          "and the three endpoints")


def test_worker_over_mutual_tls_with_an_encrypted_key_and_web_bound_to_one_address(
    broker: SecureBroker, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    key_password = broker.client.key_password
    assert key_password is not None

    async def without_certificate() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.mtls, **mtls_options(broker, with_certificate=False))
        try:
            await admin.start()
        finally:
            await admin.close()

    # The listener refuses a client without a certificate, so the worker getting through proves it sends its own.
    with pytest.raises(Exception, match="Unable to bootstrap"):
        asyncio.run(without_certificate())

    worker = new_worker(broker.mtls, tmp_path, host="127.0.0.2")  # all of 127/8 is loopback on Linux
    started = time.monotonic()
    worker.start(
        KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CA_FILE=str(broker.ca.cert),
        KAFKA_SSL_CERT_FILE=str(broker.client.cert), KAFKA_SSL_KEY_FILE=str(broker.client.key),
        KAFKA_SSL_KEY_PASSWORD=key_password, WORKER_WEB_HOST="127.0.0.2",
    )
    try:
        worker.wait_ready(timeout=120)
        to_ready = time.monotonic() - started
        decided, dead = decide_events(worker, mtls_options(broker), seed=72)
        listening = listening_addresses(worker.web_port)
        assert listening == {"127.0.0.2"}, f"web port {worker.web_port} listens on {listening}"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", worker.web_port), timeout=5).close()
        assert_never_shown(worker, key_password)
    finally:
        code = worker.stop()
    assert code == 0, worker.tail_log()
    assert key_password not in worker.log_path.read_text(errors="replace")
    record_property("mtls_start_to_ready_seconds", round(to_ready, 1))
    print(f"\nmutual-TLS worker: ready in {to_ready:.1f}s, {decided} decisions + {dead} dead letters; "
          f"web only on 127.0.0.2:{worker.web_port}")


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (IPv4 and IPv6), from /proc/net."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, local_port = fields[1].split(":")
            if fields[3] == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_policy_publish_over_sasl_ssl_with_its_password_in_the_environment(broker: SecureBroker, tmp_path: Path) -> None:
    topic = f"sec-{uuid.uuid4().hex[:10]}.policies"
    result = run_cli(
        tmp_path, "policy", "publish", str(POLICY_FILE), KAFKA_BOOTSTRAP_SERVERS=broker.sasl_ssl, POLICY_TOPIC=topic,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SSL_CA_FILE=str(broker.ca.cert), KAFKA_SASL_USERNAME=USER,
        KAFKA_SASL_PASSWORD=broker.password,
    )
    assert result.returncode == 0, result
    assert "published policy" in result.stdout
    assert broker.password not in result.stdout + result.stderr
    (record,) = consume(broker.sasl_ssl, sasl_options(broker), topic, 1)
    assert record.value == POLICY_FILE.read_bytes()


def test_overrides_over_mutual_tls_set_list_and_clear(broker: SecureBroker, tmp_path: Path) -> None:
    topic = f"sec-{uuid.uuid4().hex[:10]}.overrides"
    tls = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.mtls, "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": str(broker.ca.cert),
        "KAFKA_SSL_CERT_FILE": str(broker.client.cert), "KAFKA_SSL_KEY_FILE": str(broker.client.key),
        "KAFKA_SSL_KEY_PASSWORD": broker.client.key_password or "", "OVERRIDES_TOPIC": topic,
    }
    published = run_cli(tmp_path, "override", "set", "P-1", "--decision", "allow", "--reason", "appeal", "--author", "a", **tls)
    assert (published.returncode, published.stderr) == (0, ""), published
    assert f"to {topic} (created it: compacted, 4 partitions)" in published.stdout
    listed = run_cli(tmp_path, "override", "list", "--json", **tls)
    assert listed.returncode == 0, listed
    assert [(row["product_id"], row["status"]) for row in map(orjson.loads, listed.stdout.splitlines())] == [("P-1", "in_force")]
    cleared = run_cli(tmp_path, "override", "clear", "P-1", **tls)
    assert cleared.returncode == 0 and "(it had allow in force until cleared" in cleared.stdout, cleared
    records = consume(broker.mtls, mtls_options(broker), topic, 2)
    assert [(r.key, r.value is None) for r in records] == [(b"P-1", False), (b"P-1", True)]
    output = published.stdout + published.stderr + listed.stderr + cleared.stdout + cleared.stderr
    assert (broker.client.key_password or "") not in output


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "POLICY_", "WORKER_", "PROCESSING_"))}
    return subprocess.run(
        [WORKER, *args],
        env={
            **clean, "WORKER_WEB_HOST": "127.0.0.1", "WORKER_WEB_PORT": str(free_port()),
            "STATE_DIR": str(tmp_path / "state"), **env,
        },
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )


WRONG_PASSWORD = f"wrong-{token_hex(8)}"


@pytest.mark.parametrize(
    ("command", "case", "expected"),
    [
        pytest.param("worker", "wrong-password", "SCRAM-SHA-512 authentication as 'compliance-worker'",
                     id="worker-wrong-password"),
        pytest.param("policy publish", "wrong-password", "SCRAM-SHA-512 authentication as 'compliance-worker'",
                     id="publish-wrong-password"),
        pytest.param("override set", "wrong-password", "SCRAM-SHA-512 authentication as 'compliance-worker'",
                     id="override-set-wrong-password"),
        pytest.param("override list", "untrusted-ca", "is not trusted (unable to get local issuer certificate)",
                     id="override-list-untrusted-certificate"),
        pytest.param("worker", "unknown-user", "SCRAM-SHA-512 authentication as 'nobody'", id="worker-unknown-user"),
        pytest.param("worker", "other-mechanism", "does not accept SASL mechanism SCRAM-SHA-256", id="worker-scram-256"),
        pytest.param("worker", "untrusted-ca", "is not trusted (unable to get local issuer certificate)",
                     id="worker-untrusted-certificate"),
        pytest.param("worker", "no-client-certificate", "closed the connection during the handshake: does it want a "
                     "client certificate", id="worker-mtls-without-certificate"),
        pytest.param("worker", "tls-to-plaintext", "does that listener speak SSL?", id="worker-tls-to-plaintext-listener"),
    ],
)
def test_a_refused_connection_is_one_clear_line_and_exit_2(
    broker: SecureBroker, tmp_path: Path, record_property: pytest.RecordProperty, command: str, case: str, expected: str
) -> None:
    sasl = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.sasl_ssl, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SSL_CA_FILE": str(broker.ca.cert), "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": broker.password,
    }
    tls = {"KAFKA_BOOTSTRAP_SERVERS": broker.mtls, "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": str(broker.ca.cert)}
    env = {
        "wrong-password": {**sasl, "KAFKA_SASL_PASSWORD": WRONG_PASSWORD},
        "unknown-user": {**sasl, "KAFKA_SASL_USERNAME": "nobody"},
        "other-mechanism": {**sasl, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
        "untrusted-ca": {**sasl, "KAFKA_SSL_CA_FILE": str(broker.other_ca.cert)},
        "no-client-certificate": tls,
        "tls-to-plaintext": {**tls, "KAFKA_BOOTSTRAP_SERVERS": broker.plaintext},
    }[case]
    args = {
        "worker": ["worker"], "policy publish": ["policy", "publish", str(POLICY_FILE)],
        "override set": ["override", "set", "P-1", "--decision", "block", "--reason", "r", "--author", "a"],
        "override list": ["override", "list"],
    }[command]
    started = time.monotonic()
    result = run_cli(tmp_path, *args, **env)
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{output}"
    assert lines[0].startswith(f"compliance-worker {command}: cannot connect to Kafka: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in output
    assert broker.password not in output and WRONG_PASSWORD not in output
    record_property("refused_to_exit_seconds", round(took, 2))
    print(f"\n{command} {case}: exit 2 after {took:.1f}s: {lines[0]}")
