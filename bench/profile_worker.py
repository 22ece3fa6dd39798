"""One worker on pre-loaded input: CPU per event from /proc, optionally under cProfile (a quick A/B tool, not a bench).

    python -m bench.profile_worker --events 100000 --partitions 4            # CPU us per event, events/s
    python -m bench.profile_worker --cprofile /tmp/worker.prof               # the same under cProfile
    python -c 'import pstats; pstats.Stats("/tmp/worker.prof").sort_stats("tottime").print_stats(30)'
    python -m bench.profile_worker --py-spy /tmp/worker.txt                   # every thread sampled by py-spy

It starts its own broker (scripts/kafka.sh, port 29492 unless --port), writes fresh topics, starts
`compliance-worker worker` with production defaults, and stops both at the end. Rates are from the
harness's view (first to last output), so they are noisier than the CPU figure on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench import procs
from bench.harness import MALFORMED_RATIO, generate
from bench.kafka_io import ROOT, Kafka, LocalBroker, Topics


async def run(args: argparse.Namespace) -> int:
    work = ROOT / ".cache" / "profile"
    broker = LocalBroker(args.port, ROOT / ".cache" / "kafka" / f"profile-node-{args.port}")
    print(broker.start(), file=sys.stderr)
    kafka = Kafka(broker.bootstrap)
    await kafka.start()
    try:
        run_id = uuid.uuid4().hex[:8]
        topics = Topics.fresh(run_id, "profile", args.partitions, args.partitions)
        await kafka.create(topics)
        count, _ = await kafka.preload(topics.input, generate(args.events, seed=args.seed, malformed_ratio=MALFORMED_RATIO))
        work.mkdir(parents=True, exist_ok=True)
        proc = procs.worker(broker.bootstrap, topics, f"profile-{run_id}", work / f"worker-{run_id}.log")
        if args.cprofile:
            proc.argv = [sys.executable, "-c", (
                "import cProfile, sys; sys.argv = ['compliance-worker', 'worker']; from worker.commands.cli import main; "
                f"cProfile.run('main()', {str(args.cprofile)!r})"
            )]
        proc.start()
        spy = None
        if args.py_spy:
            # Sampled from outside, every thread (Faust's consumer runs aiokafka in a thread of its own), without
            # cProfile's overhead per call: the split by layer in docs/performance.md comes from this.
            spy = subprocess.Popen([
                str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(proc.pid), "--threads",
                "--nonblocking", "--rate", "250", "--format", "raw", "--output", str(args.py_spy),
            ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first: list[tuple[float, float]] = []

        def on_poll(total: int) -> None:
            proc.sample()
            if total and not first:
                first.append((time.monotonic(), proc.cpu_s))

        await kafka.wait_for(topics.output_tps(), count, check=proc.check, on_poll=on_poll, timeout=900, stall=120,
                             what="profile")
        seconds, cpu = time.monotonic() - first[0][0], (proc.sample(), proc.cpu_s)[1] - first[0][1]
        threads = thread_cpu(proc.pid)
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled when interrupted
            spy.wait(60)
        exit_code = proc.stop(timeout=60)
        print(f"{count:,} events, {args.partitions} partitions: {cpu / count * 1e6:.1f} us of CPU per event, "
              f"{count / seconds:,.0f} events/s, {cpu / seconds:.0%} of a core; exit {exit_code}; log {proc.log_path}")
        print("CPU seconds by thread, whole run: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in threads))
        return 0 if exit_code == 0 else 1
    finally:
        await kafka.close()
        broker.stop()


def thread_cpu(pid: int) -> list[tuple[str, float]]:
    """CPU seconds each thread of ``pid`` has used (user + system), largest first: the main thread runs the agents,
    Faust's consumer thread runs aiokafka's consumer."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        found.append((f"{name}[{task.name}]", (int(fields[11]) + int(fields[12])) / ticks))
    return sorted(found, key=lambda item: -item[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--port", type=int, default=29492)
    parser.add_argument("--cprofile", type=Path, help="write a cProfile of the worker's main thread here")
    parser.add_argument("--py-spy", type=Path, help="write py-spy's samples of every thread here (collapsed stacks)")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
