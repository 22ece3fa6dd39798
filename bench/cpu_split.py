"""Where the worker's CPU goes, by layer and thread, from py-spy's samples (`python -m bench.profile_worker --py-spy`).

    python -m bench.cpu_split /tmp/worker.txt [--events N] [--cpu-us-per-event U]

Each sample is charged to the innermost frame that belongs to a layer: the core (worker/core), the worker's own
stream code (worker/stream, worker/kafka), the RocksDB store (rocksdict), Faust and mode, the Kafka client
(aiokafka, compression), Prometheus, or the event loop itself (asyncio, selectors). With --cpu-us-per-event (from
profile_worker's line), each layer's share is also given in microseconds per event.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

# (layer, pattern on a frame's file): the first layer whose pattern an innermost-first frame matches wins.
LAYERS = (
    ("core", re.compile(r"\(worker/core/")),
    ("state store", re.compile(r"rocksdict|\(worker/kafka/stores\.py|\(worker/stream/state_store\.py")),
    ("worker stream code", re.compile(r"\(worker/(stream|kafka)/")),
    ("prometheus", re.compile(r"\(prometheus_client/")),
    ("kafka client (aiokafka, codecs)", re.compile(r"\(aiokafka/|cramjam|zstd|lz4|snappy")),
    ("faust and mode", re.compile(r"\(faust/|\(mode/")),
    ("event loop", re.compile(r"\(asyncio/|\(selectors\.py|\(threading\.py|\(concurrent/")),
)
FRAME = re.compile(r"^thread \(\d+\): (?P<thread>[^;]+);(?P<stack>.*) (?P<count>\d+)$")


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for layer, pattern in LAYERS:
            if pattern.search(frame):
                return layer
    return "other"


def split(path: Path) -> tuple[Counter[tuple[str, str]], int]:
    charged: Counter[tuple[str, str]] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        found = FRAME.match(line)
        if found is None:
            continue
        count = int(found["count"])
        thread = "main" if found["thread"] == "MainThread" else "consumer thread"
        charged[(thread, layer_of(found["stack"].split(";")))] += count
        total += count
    return charged, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_split", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", type=Path)
    parser.add_argument("--cpu-us-per-event", type=float, help="the CPU per event profile_worker measured")
    args = parser.parse_args(argv)
    charged, total = split(args.samples)
    if not total:
        print(f"no samples in {args.samples}", file=sys.stderr)
        return 1
    by_layer: Counter[str] = Counter()
    for (_, layer), count in charged.items():
        by_layer[layer] += count
    print(f"{total:,} samples (py-spy, running threads only)")
    for layer, count in by_layer.most_common():
        share = count / total
        micros = f"  {share * args.cpu_us_per_event:5.1f} us/event" if args.cpu_us_per_event else ""
        threads = ", ".join(f"{thread} {c / total:.0%}" for (thread, name), c in sorted(charged.items()) if name == layer)
        print(f"  {layer:34s} {share:6.1%}{micros}   ({threads})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
