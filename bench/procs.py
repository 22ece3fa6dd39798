"""The processes under test: each in its own process (own GIL), logging to a file, measured from /proc."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

import orjson

from bench.kafka_io import ROOT, HarnessError, Topics
from worker.settings import settings_table

# Nothing of the caller's environment may change how the process under test runs: production defaults only.
_SETTING_NAMES = {name for name, _ in settings_table()}


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without worker settings, with this checkout on PYTHONPATH (after a --code tree)."""
    env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES and not k.startswith("KAFKA_")}
    paths = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path]
    if str(ROOT) not in paths:
        paths.append(str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a live process in KiB, from /proc (no psutil here); (0, 0) once it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return rss, hwm


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ASSIGNED_RE = re.compile(r"^raw_loop: assigned [1-9]", re.MULTILINE)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (from /proc/PID/stat), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat(5)
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


_LIVE: set[Proc] = set()


def stop_all() -> None:
    """Stop every process under test still running (after an interrupt or a harness error)."""
    for proc in list(_LIVE):
        proc.stop(timeout=15)


class Proc:
    """One process under test; stdout and stderr go to `log_path`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, web_port: int | None = None):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.web_port = web_port
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.peak_rss_kb = 0
        self.rss_kb = 0
        self.cpu_s = 0.0
        self._log: IO[bytes] | None = None

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.started_at = time.time()
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C reaches the harness only; it stops these in order
        )
        _LIVE.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def sample(self) -> int:
        """Current RSS in KiB; also remembers the peak RSS the kernel reports and the CPU time used so far."""
        if self.process is None or self.process.poll() is not None:
            return self.rss_kb
        rss, hwm = memory_kb(self.pid)
        if rss:
            self.rss_kb = rss
            self.peak_rss_kb = max(self.peak_rss_kb, hwm, rss)
        cpu = cpu_seconds(self.pid)
        if cpu is not None:
            self.cpu_s = cpu
        return self.rss_kb

    def check(self) -> None:
        """Raise if the process has exited (it should run until stopped)."""
        if self.process is not None and self.process.poll() is not None:
            raise HarnessError(f"{self.name} exited with {self.process.returncode}; last lines of {self.log_path}:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; the exit code (None if it had to be killed)."""
        try:
            if self.process is None:
                return None
            if self.process.poll() is None:
                self.sample()
                self.process.terminate()
                try:
                    return self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
                    return None
            return self.process.returncode
        finally:
            _LIVE.discard(self)
            if self._log is not None:
                self._log.close()
                self._log = None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def metric_sums(self, name: str) -> float | None:
        """The sum over all label sets of a sample `name` on the worker's /metrics, None when unavailable."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
        return sum(float(value) for value in values) if values else None

    def readyz(self) -> dict | None:
        """The worker's /readyz body when it answers 200, else None."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/readyz", timeout=2) as response:
                return orjson.loads(response.read()) if response.status == 200 else None
        except (urllib.error.URLError, OSError, ValueError):
            return None


def worker(bootstrap: str, topics: Topics, app_id: str, log_path: Path, **settings: str) -> Proc:
    """`compliance-worker worker` exactly as deployed: production defaults, only topics, group, port and ``settings`` set."""
    port = free_port()
    env = clean_env(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap, INPUT_TOPIC=topics.input, DECISIONS_TOPIC=topics.decisions,
        DEAD_LETTER_TOPIC=topics.dead_letter, APP_ID=app_id, WORKER_WEB_PORT=str(port), WORKER_WEB_HOST="127.0.0.1",
        LOG_FORMAT="json", STATE_DIR=str(log_path.with_suffix(".state")), **settings,
    )
    # `python -m worker` is `compliance-worker` (worker/__main__.py) in every tree, also the old ones `--code REV` runs.
    return Proc(f"worker {app_id}", [sys.executable, "-P", "-m", "worker", "worker"], env, log_path, web_port=port)


def naive_faust(bootstrap: str, topics: Topics, app_id: str, log_path: Path, datadir: Path) -> Proc:
    port = free_port()
    env = clean_env(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap, INPUT_TOPIC=topics.input, DECISIONS_TOPIC=topics.decisions,
        DEAD_LETTER_TOPIC=topics.dead_letter, APP_ID=app_id, WORKER_WEB_PORT=str(port), BENCH_DATADIR=str(datadir),
        BENCH_INPUT_PARTITIONS=str(topics.input_partitions),
    )
    return Proc(f"naive_faust {app_id}", [sys.executable, "-P", "-m", "bench.naive_app"], env, log_path, web_port=port)


def raw_aiokafka(bootstrap: str, topics: Topics, group: str, log_path: Path, max_records: int) -> Proc:
    argv = [
        sys.executable, "-P", "-m", "bench.raw_loop", "--bootstrap", bootstrap, "--input", topics.input,
        "--decisions", topics.decisions, "--dead-letter", topics.dead_letter, "--group", group,
        "--max-records", str(max_records),
    ]
    return Proc(f"raw_aiokafka {group}", argv, clean_env(), log_path)


def confluent_raw(bootstrap: str, topics: Topics, group: str, log_path: Path, max_records: int) -> Proc:
    argv = [
        sys.executable, "-P", "-m", "bench.confluent_loop", "--bootstrap", bootstrap, "--input", topics.input,
        "--decisions", topics.decisions, "--dead-letter", topics.dead_letter, "--group", group,
        "--max-records", str(max_records),
    ]
    return Proc(f"confluent_raw {group}", argv, clean_env(), log_path)


def quix_streams(bootstrap: str, topics: Topics, group: str, log_path: Path, state_dir: Path) -> Proc:
    argv = [
        sys.executable, "-P", "-m", "bench.quix_app", "--bootstrap", bootstrap, "--input", topics.input,
        "--decisions", topics.decisions, "--dead-letter", topics.dead_letter, "--group", group,
        "--state-dir", str(state_dir),
    ]
    # Quix reads settings from Quix__* variables too; none of the caller's may change how it runs.
    env = {name: value for name, value in clean_env().items() if not name.lower().startswith("quix__")}
    return Proc(f"quix_streams {group}", argv, env, log_path)


async def wait_assigned(proc: Proc, timeout: float) -> None:
    """Until the process has its input partitions: /readyz for the worker, the raw loop's 'assigned' line."""
    if proc.web_port is not None:
        await wait_until(proc, lambda body: bool(body.get("ready")), timeout, "ready")
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        try:
            if ASSIGNED_RE.search(proc.log_path.read_text(errors="replace")):
                return
        except FileNotFoundError:
            pass
        await asyncio.sleep(0.2)
    raise HarnessError(f"{proc.name}: no partitions assigned after {timeout:.0f}s; log:\n{proc.tail()}")


async def wait_until(proc: Proc, ready: Callable[[dict], bool], timeout: float, what: str) -> dict:
    """Poll the worker's /readyz until `ready(body)` holds; the body."""
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        proc.check()
        body = proc.readyz()
        if body is not None and ready(body):
            return body
        await asyncio.sleep(0.2)
    raise HarnessError(f"{proc.name}: {what} not reached after {timeout:.0f}s (last /readyz: {body}); log:\n{proc.tail()}")
