"""scripts/kafka.sh as people run it: `make kafka-up` starts the default broker (kafka/pom.xml), `make kafka-down`
stops it, and a KAFKA_VERSION Maven does not have fails loudly; other versions run in tests/integration/interop."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import DEFAULT_KAFKA_VERSION, KAFKA_SCRIPT, ROOT, free_port
from tests.tools import require_binary


def script_env(**settings: str) -> dict[str, str]:
    """This environment without any KAFKA_ setting of the caller's shell, plus ``settings``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KAFKA_")}
    env.update(settings)
    return env


def classpath(pid: int) -> str:
    """The -cp argument of a running java process."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return args[args.index(b"-cp") + 1].decode()


def test_make_kafka_up_starts_the_default_version_and_kafka_down_stops_it() -> None:
    make = require_binary("make", "GNU make, which runs every setup step")
    port = free_port()
    home = ROOT / ".cache" / "kafka" / f"node-{port}"  # where `make kafka-up` keeps a broker on that port
    env = script_env(KAFKA_PORT=str(port), KAFKA_CONTROLLER_PORT=str(free_port()))

    def run(target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([make, "-s", target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    try:
        up = run("kafka-up")
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        assert f"kafka: ready on 127.0.0.1:{port}" in up.stdout
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        pid = int((home / "pid").read_text())
        libs = ROOT / ".cache" / "kafka" / f"libs-{DEFAULT_KAFKA_VERSION}"
        assert classpath(pid) == f"{libs}/*"
        assert sorted(libs.glob("kafka_2.13-*.jar")) == [libs / f"kafka_2.13-{DEFAULT_KAFKA_VERSION}.jar"]
        assert (libs / f"kafka-tools-{DEFAULT_KAFKA_VERSION}.jar").is_file()
        again = run("kafka-up")
        assert again.returncode == 0 and f"already running (pid {pid})" in again.stdout, again.stdout
        down = run("kafka-down")
        assert down.returncode == 0 and f"kafka: stopped (pid {pid})" in down.stdout, down.stdout
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        run("kafka-down")
        shutil.rmtree(home, ignore_errors=True)


def test_a_version_maven_does_not_have_fails_the_fetch_loudly_and_leaves_no_jars() -> None:
    missing = "3.9.99"
    fetched = subprocess.run(
        [str(KAFKA_SCRIPT), "libs"], env=script_env(KAFKA_VERSION=missing), capture_output=True, text=True, timeout=300,
    )
    assert fetched.returncode == 1, fetched.stdout
    assert f"kafka: maven could not fetch Apache Kafka {missing} (kafka/pom.xml)" in fetched.stderr
    assert f"kafka_2.13:jar:{missing}" in fetched.stderr  # Maven's own words, naming the artifact it did not find
    assert not (ROOT / ".cache" / "kafka" / f"libs-{missing}").exists()


def test_a_version_that_is_not_one_is_refused_before_maven_runs() -> None:
    refused = subprocess.run(
        [str(KAFKA_SCRIPT), "libs"], env=script_env(KAFKA_VERSION="../4.4"), capture_output=True, text=True, timeout=30,
    )
    assert (refused.returncode, refused.stdout) == (2, "")
    assert "KAFKA_VERSION '../4.4' is not a version like 4.4.0" in refused.stderr


def test_a_cluster_id_beginning_with_a_dash_formats_and_starts_the_node() -> None:
    # base64url ids begin with '-' one time in 64; the fault tests' clusters failed to format on one (CI, 2026-12-05).
    cluster_id = "-" + "A" * 21
    port = free_port()
    home = ROOT / ".cache" / "kafka" / f"node-{port}"
    env = script_env(KAFKA_PORT=str(port), KAFKA_CONTROLLER_PORT=str(free_port()), KAFKA_CLUSTER_ID=cluster_id)

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(KAFKA_SCRIPT), command], env=env, capture_output=True, text=True, timeout=300)

    try:
        up = run("up")
        assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
        assert f"cluster.id={cluster_id}\n" in (home / "data" / "meta.properties").read_text()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        run("down")
        shutil.rmtree(home, ignore_errors=True)
