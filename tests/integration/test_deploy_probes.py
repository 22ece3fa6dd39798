"""The image's HEALTHCHECK and the Kubernetes probes, run against real workers (no Docker needed for that).

Readiness (docs/operations.md#probes): a worker with no partitions is ready, a rebalance does not make the
workers unready, a rolling update of N+1 workers over N partitions completes, and a crash-looping agent makes
its worker unready.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dockerfile
import orjson
import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.integration.conftest import ROOT, WorkerProcess, free_port
from tests.integration.kafka import consume, produce, valid_and_malformed
from tests.integration.prometheus import sample
from worker.commands.sample import generate
from worker.stream.health import AGENT_RESTARTING, NO_PARTITIONS, REBALANCING

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

    workers = yaml.safe_load(Path(DEPLOY / "k8s" / "statefulset.yaml").read_text(encoding="utf-8"))
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        status, _body = worker.get(container[probe]["httpGet"]["path"])
        assert status == 200, f"{probe} on {container[probe]['httpGet']['path']}: {status}"
    assert worker.get(workers["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])[0] == 200


# --- readiness --------------------------------------------------------------------------------------------------


def new_topics(bootstrap: str, partitions: int, decisions_config: dict[str, str] | None = None) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:10]
    names = {kind: f"it-{suffix}.{kind}" for kind in ("input", "decisions", "dead_letter")}

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([
                NewTopic(name, partitions, 1, topic_configs=decisions_config if kind == "decisions" else None)
                for kind, name in names.items()
            ])
        finally:
            await admin.close()

    asyncio.run(create())
    return names


def readyz(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    status, body = worker.get("/readyz")
    return status, orjson.loads(body)


def events(tag: int, count: int = 50) -> list[tuple[bytes, bytes]]:
    return list(generate(count, seed=tag, malformed_ratio=0.0))


def poll(check: Callable[[], Any], what: str, workers: list[WorkerProcess], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    logs = "\n".join(f"--- {w.log_path.name}\n{w.tail_log(30)}" for w in workers)
    pytest.fail(f"not {what} within {timeout}s (last: {last!r})\n{logs}", pytrace=False)


def start_ready_watching(joining: WorkerProcess, watched: list[WorkerProcess], timeout: float = 60.0) -> list[dict]:
    """Start ``joining`` and poll the ``watched`` workers' /readyz until it is ready; every answer of theirs."""
    joining.start(POLICY_TOPIC=f"{joining.input_topic}.policies")
    answers: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in watched:
            status, body = readyz(worker)
            answers.append({"status": status, **body})
        assert joining.process is not None and joining.process.poll() is None, joining.tail_log()
        try:
            if joining.get("/readyz")[0] == 200:
                return answers
        except OSError:
            pass  # not listening yet
        time.sleep(0.01)
    pytest.fail(f"{joining.log_path.name} not ready within {timeout}s:\n{joining.tail_log()}", pytrace=False)


def test_more_workers_than_partitions_are_all_ready_and_a_rolling_update_of_them_completes(
    kafka: str, tmp_path: Path,
) -> None:
    """N = 1 partition, N + 1 = 2 workers: the surplus one is idle but Ready, holding the standby.

    Then a rolling update as the StatefulSet controller does it: highest ordinal first, the pod deleted (SIGTERM),
    created again on its volume, and the next one only once it is Ready. Under the old readiness (503 while a
    worker had no partitions, or during a rebalance) the idle worker never became Ready and the update stopped.
    """
    topics = new_topics(kafka, partitions=1)
    first = WorkerProcess.on(kafka, topics, tmp_path / "worker-0.log")
    second = WorkerProcess.on(kafka, topics, tmp_path / "worker-1.log")
    policy_topic = f"{topics['input']}.policies"
    sent: list[tuple[bytes, bytes]] = []
    try:
        first.start(POLICY_TOPIC=policy_topic)
        assert first.wait_ready()["assigned_partitions"] == [0]
        sent += events(1)
        produce(kafka, topics["input"], sent[-50:])

        watched = start_ready_watching(second, [first])
        assert all(answer["status"] == 200 for answer in watched), [a for a in watched if a["status"] != 200][:3]
        # The join rebalanced the first worker (its second generation), and every answer it gave meanwhile was 200.
        # Polled every 10 ms, the answers usually catch the rebalance itself too (the "rebalancing" note); a
        # recovery that ends within a poll may not, so that is reported, not required.
        assert "generation id 2 " in first.log_path.read_text(), "the join did not rebalance the first worker"
        seen = sum(REBALANCING in answer["notes"] for answer in watched)
        print(f"\n{len(watched)} /readyz answers of the first worker while the second joined, {seen} during the rebalance")
        status, idle = readyz(second)
        assert status == 200 and idle["assigned_partitions"] == [] and NO_PARTITIONS in idle["notes"], idle
        poll(lambda: readyz(second)[1]["standby_partitions"] == [0], "the idle worker holding the standby", [second])

        for ordinal, pod in ((1, second), (0, first)):  # the StatefulSet's rolling update
            assert pod.stop() == 0, pod.tail_log()
            sent += events(10 + ordinal)
            produce(kafka, topics["input"], sent[-50:])
            others = [first] if pod is second else [second]
            watched = start_ready_watching(pod, others)
            assert all(answer["status"] == 200 for answer in watched), [a for a in watched if a["status"] != 200][:3]

        owners = [readyz(worker)[1]["assigned_partitions"] for worker in (first, second)]
        assert sorted(owners) == [[], [0]], owners
        valid, _ = valid_and_malformed(sent)
        decided = {orjson.loads(r.value)["event_id"] for r in consume(kafka, topics["decisions"], len(valid))}
        assert decided == valid
    finally:
        first.stop()
        second.stop()


def test_a_worker_whose_agent_keeps_crashing_is_not_ready(kafka: str, tmp_path: Path) -> None:
    """Every batch's decisions are refused (a decisions topic whose max.message.bytes is below a decision's size:
    not retriable), so the agent crashes when the next batch comes, and Faust's supervisor restarts it, batch after
    batch. The worker still consumes, so ComplianceWorkerStalled stays quiet; readiness and
    compliance_agent_restarts_total tell."""
    topics = new_topics(kafka, partitions=4, decisions_config={"max.message.bytes": "64"})
    worker = WorkerProcess.on(kafka, topics, tmp_path / "worker.log")
    trickle = iter(range(1_000))

    def unready_while_fed() -> tuple[int, dict[str, Any]] | None:
        produce(kafka, topics["input"], events(next(trickle), count=5))  # input keeps coming, as it does in production
        status, body = readyz(worker)
        return (status, body) if status == 503 else None

    try:
        worker.start(POLICY_TOPIC=f"{topics['input']}.policies")
        ready = worker.wait_ready()
        assert ready["agent_restarts"] == 0
        status, body = poll(unready_while_fed, "unready after the agent crashed", [worker])
        assert body["reasons"] == [AGENT_RESTARTING] and body["agent_restarts"] >= 1, body
        assert body["assigned_partitions"] == [0, 1, 2, 3] and body["broker_reachable"], body
        assert sample(worker.metrics(), "compliance_agent_restarts_total") >= body["agent_restarts"]
        before = body["agent_restarts"]
        poll(lambda: unready_while_fed() and readyz(worker)[1]["agent_restarts"] > before, "the agent crashing again",
             [worker])
        assert worker.process is not None and worker.process.poll() is None, "restarted, not exited"
        assert "agent_restarted" in worker.log_path.read_text()
    finally:
        worker.stop()
