"""`make run`: local Kafka (unless one answers), the worker, a sample catalog and a live summary; Ctrl-C stops all."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from worker.commands.sample import generate
from worker.kafka.security import client_options
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = ROOT / "scripts" / "kafka.sh"
RUN_DIR = ROOT / ".cache" / "run"
SAMPLE_RE = re.compile(r'^(compliance_decisions_total|compliance_dead_letters_total)\{([^}]*)\} (\S+)$', re.MULTILINE)


def say(message: str) -> None:
    print(f"make run: {message}", flush=True)


async def broker_answers(settings: Settings, timeout: float = 3.0) -> bool:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers, request_timeout_ms=int(timeout * 1000), **client_options(settings)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means "no broker here"
        return False
    finally:
        await admin.close()


async def feed(settings: Settings, topic: str, count: int, seed: int) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=10, **client_options(settings)
    )
    await producer.start()
    started = time.monotonic()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in generate(count, seed=seed)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - started


def scrape(url: str) -> tuple[dict[str, float], dict[str, float], float]:
    """(decisions by 'decision/cluster', dead letters by code, total handled) from /metrics."""
    with urllib.request.urlopen(url, timeout=3) as response:
        text = response.read().decode()
    decisions: dict[str, float] = {}
    dead: dict[str, float] = {}
    for name, labels, value in SAMPLE_RE.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if name == "compliance_decisions_total":
            decisions[f"{fields['decision']}/{fields['cluster']}"] = float(value)
        else:
            dead[fields["code"]] = float(value)
    return decisions, dead, sum(decisions.values()) + sum(dead.values())


def wait_ready(url: str, worker: subprocess.Popen[bytes], log_path: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"make run: the worker exited ({worker.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"make run: the worker was not ready after {timeout:.0f}s; see {log_path}")


def main() -> int:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # "no broker yet" is expected and reported by us
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=int(os.environ.get("RUN_EVENTS", "5000")))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("RUN_SECONDS", "0")),
                        help="stop by itself after this long (0: run until Ctrl-C)")
    args = parser.parse_args()

    env = dict(os.environ)
    env.setdefault("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{env.get('KAFKA_PORT', '9092')}")
    env.setdefault("STATE_DIR", str(RUN_DIR / "state"))  # the worker's local state, kept between runs
    settings = Settings.from_env(env)
    kafka_env = {**env, "KAFKA_PORT": settings.bootstrap_servers[0].rpartition(":")[2] or "9092"}
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    started_kafka = False
    worker: subprocess.Popen[bytes] | None = None
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        if asyncio.run(broker_answers(settings)):
            say(f"using the Kafka broker that answers at {settings.kafka_bootstrap_servers}")
        else:
            say(f"no broker at {settings.kafka_bootstrap_servers}; starting a local one on port {kafka_env['KAFKA_PORT']}")
            subprocess.run([str(KAFKA_SCRIPT), "up"], env=kafka_env, check=True)
            started_kafka = True

        log_path = RUN_DIR / "worker.log"
        say(f"starting the worker (log: {log_path})")
        with log_path.open("ab") as log:
            worker = subprocess.Popen(
                [str(Path(sys.executable).with_name("compliance-worker")), "worker"],
                env={**env, "LOG_FORMAT": env.get("LOG_FORMAT", "json")},
                stdout=log, stderr=log, start_new_session=True,
            )
        url = f"http://127.0.0.1:{settings.worker_web_port}"
        wait_ready(url, worker, log_path)
        _, _, before = scrape(url + "/metrics")

        say(f"feeding {args.events:,} sample events to {settings.input_topic}")
        fed_at = time.monotonic()
        seconds = asyncio.run(feed(settings, settings.input_topic, args.events, int(time.time())))
        say(f"fed in {seconds:.2f}s; metrics: {url}/metrics  health: {url}/healthz  readiness: {url}/readyz")
        say(f"decisions go to {settings.decisions_topic}, dead letters to {settings.dead_letter_topic}; Ctrl-C stops everything")

        last_total, last_time, last_print = before, fed_at, 0.0
        done_at: float | None = None
        deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
        while not stop_requested and (deadline is None or time.monotonic() < deadline):
            if worker.poll() is not None:
                say(f"the worker exited ({worker.returncode}); see {log_path}")
                return 1
            decisions, dead, total = scrape(url + "/metrics")
            now = time.monotonic()
            handled = total - before
            if done_at is None and handled >= args.events:
                done_at = now
            # A line a second while events flow, then one every 30 s while idle.
            if done_at == now or now - last_print >= (1.0 if total != last_total else 30.0):
                rate = (total - last_total) / max(now - last_time, 1e-9)
                last_total, last_time, last_print = total, now, now
                # The worker exports every dead-letter code from the start (0 until it happens): only those seen.
                by_cluster = ", ".join(f"{k} {int(v):,}" for k, v in sorted(decisions.items()) if v) or "-"
                dead_text = ", ".join(f"{k} {int(v):,}" for k, v in sorted(dead.items()) if v) or "-"
                print(f"  {int(handled):,}/{args.events:,} handled, {rate:,.0f} events/s | decisions: {by_cluster}"
                      f" | dead letters: {dead_text}", flush=True)
                if done_at == now:
                    say(f"all {args.events:,} sample events handled in {done_at - fed_at:.2f}s "
                        f"({args.events / (done_at - fed_at):,.0f} events/s from first send to last decision)")
            time.sleep(0.25)
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            say("stopping the worker")
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
        if started_kafka:
            say("stopping the local Kafka broker")
            subprocess.run([str(KAFKA_SCRIPT), "down"], env=kafka_env, check=False)


if __name__ == "__main__":
    sys.exit(main())
