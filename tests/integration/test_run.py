"""`make run` (scripts/run.py) as the README's quick start shows it: what it prints, and that it stops what it started."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.integration.conftest import KAFKA_SCRIPT, ROOT, free_port

RUN_SCRIPT = ROOT / "scripts" / "run.py"
EVENTS = 500


def run_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without any setting of ours, then `settings` and unique topics and group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "WORKER_", "POLICY_", "RUN_", "APP_"))}
    suffix = uuid.uuid4().hex[:10]
    env.update({
        "RUN_EVENTS": str(EVENTS), "RUN_SECONDS": "20", "WORKER_WEB_PORT": str(free_port()),
        "INPUT_TOPIC": f"run-{suffix}.product-upserts", "DECISIONS_TOPIC": f"run-{suffix}.decisions",
        "DEAD_LETTER_TOPIC": f"run-{suffix}.dead-letter", "POLICY_TOPIC": f"run-{suffix}.policies",
        "APP_ID": f"run-{suffix}",
    })
    env.update(settings)
    return env


def children(pid: int) -> dict[int, str]:
    """The live child processes of `pid` with their command lines."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Run:
    """scripts/run.py in its own process, its output in a file; the worker it starts is noted while it runs."""

    def __init__(self, env: dict[str, str], where: Path) -> None:
        self.output = where / "run.out"
        with self.output.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, str(RUN_SCRIPT)], env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
            )
        self.worker_pid: int | None = None

    @property
    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def finish(self, timeout: float = 240) -> tuple[int, list[str]]:
        """Until it exits by itself (RUN_SECONDS), noting the worker it started: (exit code, lines printed)."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"make run still running after {timeout}s:\n{self.text}"
            if self.worker_pid is None and "make run: feeding" in self.text:
                workers = [pid for pid, cmd in children(self.process.pid).items() if "compliance-worker" in cmd]
                assert len(workers) == 1, children(self.process.pid)
                self.worker_pid = workers[0]
            time.sleep(0.1)
        return self.process.returncode, self.text.splitlines()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.worker_pid is not None and alive(self.worker_pid):
            os.kill(self.worker_pid, 9)


def check_the_feed_and_summary(lines: list[str], env: dict[str, str]) -> None:
    """The lines of the README's quick start from "starting the worker" on, with this run's topics and port."""
    text = "\n".join(lines)
    url = f"http://127.0.0.1:{env['WORKER_WEB_PORT']}"
    expected = [
        r"make run: starting the worker \(log: .*/\.cache/run/worker\.log\)",
        rf"make run: feeding {EVENTS:,} sample events to {re.escape(env['INPUT_TOPIC'])}",
        rf"make run: fed in [\d.]+s; metrics: {url}/metrics  health: {url}/healthz  readiness: {url}/readyz",
        rf"make run: decisions go to {re.escape(env['DECISIONS_TOPIC'])}, dead letters to "
        rf"{re.escape(env['DEAD_LETTER_TOPIC'])}; Ctrl-C stops everything",
        rf"make run: all {EVENTS:,} sample events handled in [\d.]+s \([\d,]+ events/s from first send to last decision\)",
        r"make run: stopping the worker",
    ]
    position = 0
    for pattern in expected:
        found = next((n for n in range(position, len(lines)) if re.fullmatch(pattern, lines[n])), None)
        assert found is not None, f"no line like {pattern!r} (in order) in:\n{text}"
        position = found + 1
    progress = [line for line in lines if re.match(r"  [\d,]+/[\d,]+ handled", line)]
    final = re.fullmatch(
        rf"  {EVENTS:,}/{EVENTS:,} handled, [\d,]+ events/s \| decisions: (.+) \| dead letters: (.+)", progress[-1]
    )
    assert final is not None, progress[-1]
    counts = [int(item.rsplit(" ", 1)[1].replace(",", "")) for part in final.groups() if part != "-" for item in part.split(", ")]
    assert sum(counts) == EVENTS, f"the summary does not add up to {EVENTS}: {progress[-1]}"
    assert re.search(r"\b(allow|block)/(none|textile_fashion|food_beverage|crafts) \d", final.group(1)), final.group(1)


def test_make_run_starts_a_broker_and_stops_all_it_started(tmp_path: Path) -> None:
    port, controller = free_port(), free_port()
    env = run_env(
        tmp_path, KAFKA_PORT=str(port), KAFKA_CONTROLLER_PORT=str(controller), KAFKA_HOME_DIR=str(tmp_path / "kafka"),
    )
    assert not listening(port) and not listening(controller), "something answers on the fresh ports"
    run = Run(env, tmp_path)
    try:
        code, lines = run.finish()
        text = "\n".join(lines)
        assert code == 0, text
        assert lines[0] == f"make run: no broker at 127.0.0.1:{port}; starting a local one on port {port}", text
        ready = re.fullmatch(rf"kafka: ready on 127\.0\.0\.1:{port} in [\d.]+s \(pid (\d+), log: .+\)", lines[1])
        assert ready is not None, text
        broker_pid = int(ready.group(1))
        check_the_feed_and_summary(lines, env)
        assert lines[-2:] == ["make run: stopping the local Kafka broker", f"kafka: stopped (pid {broker_pid})"], text

        # Nothing it started is left: the broker, the worker, their ports.
        assert run.worker_pid is not None
        assert not alive(run.worker_pid), f"the worker (pid {run.worker_pid}) outlived make run"
        assert not alive(broker_pid), f"the broker (pid {broker_pid}) outlived make run"
        assert not (tmp_path / "kafka" / "pid").exists()
        for what, number in (("broker", port), ("controller", controller), ("web", int(env["WORKER_WEB_PORT"]))):
            assert not listening(number), f"the {what} port {number} still answers"
    finally:
        run.kill()
        subprocess.run([str(KAFKA_SCRIPT), "down"], env=env, capture_output=True, check=False)  # whatever it left


def test_make_run_uses_a_broker_that_answers_and_leaves_it_running(kafka: str, tmp_path: Path) -> None:
    env = run_env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka)
    run = Run(env, tmp_path)
    try:
        code, lines = run.finish()
    finally:
        run.kill()
    text = "\n".join(lines)
    assert code == 0, text
    assert lines[0] == f"make run: using the Kafka broker that answers at {kafka}", text
    check_the_feed_and_summary(lines, env)
    assert lines[-1] == "make run: stopping the worker", text
    assert not any("kafka: " in line or "Kafka broker" in line for line in lines[1:]), text
    assert run.worker_pid is not None and not alive(run.worker_pid)
    assert not listening(int(env["WORKER_WEB_PORT"]))
    assert listening(int(kafka.rpartition(":")[2])), "make run stopped a broker it did not start"

