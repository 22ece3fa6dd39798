"""Bad configuration stops the worker with one clear line and a non-zero exit, never a traceback wall."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

WORKER = str(Path(sys.executable).with_name("compliance-worker"))


def run_worker(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "POLICY_", "WORKER_", "PROCESSING_", "STATE_"))}
    return subprocess.run(
        [WORKER, "worker"], env={**clean, "WORKER_WEB_HOST": "127.0.0.1", "STATE_DIR": str(tmp_path / "state"), **env},
        cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith("compliance-worker worker: ")
    for part in parts:
        assert part in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_unreachable_broker(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = run_worker(tmp_path, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{port}", WORKER_WEB_PORT=str(free_port()))
    assert_one_line(result, "cannot reach Kafka", f"127.0.0.1:{port}")


def test_malformed_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: x\ncategory_rules: [\n")
    result = run_worker(tmp_path, POLICY_FILE=str(policy), WORKER_WEB_PORT=str(free_port()))
    assert_one_line(result, str(policy), "not valid YAML or JSON")


def test_web_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_worker(tmp_path, WORKER_WEB_PORT=str(port))
    assert_one_line(result, f"WORKER_WEB_PORT={port}", "cannot listen")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("PROCESSING_GUARANTEE", "once", id="unknown-guarantee"),
        pytest.param("WORKER_WEB_PORT", "web", id="port-not-a-number"),
        pytest.param("INPUT_TOPIC", "bad topic", id="topic-name-with-space"),
        pytest.param("LOG_FORMAT", "xml", id="unknown-log-format"),
    ],
)
def test_unknown_setting_value(tmp_path: Path, variable: str, value: str) -> None:
    assert_one_line(run_worker(tmp_path, **{variable: value}), f"{variable}=")
