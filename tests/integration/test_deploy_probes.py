"""The image's HEALTHCHECK and the Kubernetes probes, run against a real worker (no Docker needed for that)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dockerfile
import yaml

from tests.integration.conftest import ROOT, WorkerProcess, free_port

DEPLOY = ROOT / "deploy"


def healthcheck_command() -> list[str]:
    (command,) = [c for c in dockerfile.parse_file(str(DEPLOY / "Dockerfile")) if c.cmd == "HEALTHCHECK"]
    assert command.value[0] == "CMD" and command.json
    return list(command.value[1:])


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """The HEALTHCHECK's exec form, with this interpreter as the image's `python`."""
    argv = healthcheck_command()
    assert argv[0] == "python"
    env = {**os.environ, "WORKER_WEB_PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, timeout=30)


def test_image_healthcheck_and_kubernetes_probes_against_a_real_worker(worker: WorkerProcess) -> None:
    healthy = run_healthcheck(worker.web_port)
    assert healthy.returncode == 0, healthy.stderr
    nothing_there = run_healthcheck(free_port())
    assert nothing_there.returncode != 0, "the health check must fail when nothing answers"

    deployment = yaml.safe_load(Path(DEPLOY / "k8s" / "deployment.yaml").read_text(encoding="utf-8"))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        status, _body = worker.get(container[probe]["httpGet"]["path"])
        assert status == 200, f"{probe} on {container[probe]['httpGet']['path']}: {status}"
    assert worker.get(deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])[0] == 200
