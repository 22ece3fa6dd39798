"""`compliance-worker check`: classify JSON-lines events offline with the worker's own core and policy."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

import orjson

from worker.core import InvalidEvent, Policy, classify, decode_event
from worker.core.clock import format_timestamp

PROGRESS_EVERY_SECONDS = 0.5


@dataclass
class CheckSummary:
    lines: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    clusters: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "decided": sum(self.decisions.values()),
            "decisions": dict(sorted(self.decisions.items())),
            "clusters": dict(sorted(self.clusters.items())),
            "errors": dict(sorted(self.errors.items())),
        }

    def render(self, seconds: float) -> str:
        decided = sum(self.decisions.values())
        rate = self.lines / seconds if seconds > 0 else 0.0
        lines = [
            f"checked {self.lines:,} lines in {seconds:.2f}s ({rate:,.0f} lines/s): "
            f"{decided:,} decided, {sum(self.errors.values()):,} invalid",
            "  decisions: " + _counts(self.decisions),
            "  clusters:  " + _counts(self.clusters),
            "  errors:    " + _counts(self.errors),
        ]
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in sorted(counter.items())) or "none"


def check_lines(
    lines: Iterable[bytes],
    policy: Policy,
    out: BinaryIO,
    err: TextIO,
    *,
    source_name: str,
    progress: TextIO | None = None,
) -> CheckSummary:
    """Decide every non-blank line; decisions go to ``out``, one report per invalid line to ``err``."""
    summary = CheckSummary()
    decisions, clusters, errors = summary.decisions, summary.clusters, summary.errors
    write = out.write
    started = next_progress = time.monotonic()
    line_number = 0
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        decided_at = time.time()  # the decision time: clusters with an effective_from date depend on it
        try:
            decision = classify(decode_event(line.rstrip(b"\r\n")), policy, decided_at)
        except InvalidEvent as exc:
            errors[str(exc.code)] += 1
            err.write(f"line {line_number}: {exc.code}: {exc.message}\n")
            continue
        decisions[decision.decision] += 1
        clusters[decision.cluster or "none"] += 1
        write(orjson.dumps(decision.record(format_timestamp(decided_at), {"file": source_name, "line": line_number})))
        write(b"\n")
        if progress is not None and line_number & 0x3FF == 0:
            now = time.monotonic()
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_SECONDS
                rate = line_number / max(now - started, 1e-9)
                progress.write(f"\r{line_number:,} lines, {rate:,.0f} lines/s ")
                progress.flush()
    if progress is not None and line_number > 0:
        progress.write("\r\033[K")
    summary.lines = line_number
    return summary


def run_check(path: str, policy: Policy, *, summary_json: bool = False) -> int:
    """The command: 0 when the input was read to the end (invalid lines included), 1 when it could not be read."""
    started = time.monotonic()
    progress = sys.stderr if sys.stderr.isatty() else None
    try:
        if path == "-":
            summary = check_lines(sys.stdin.buffer, policy, sys.stdout.buffer, sys.stderr, source_name="-", progress=progress)
        else:
            with open(path, "rb") as handle:
                summary = check_lines(handle, policy, sys.stdout.buffer, sys.stderr, source_name=path, progress=progress)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        raise  # the reader went away: the CLI stops quietly
    except OSError as exc:
        sys.stderr.write(f"compliance-worker check: cannot read {path}: {exc.strerror or exc}\n")
        return 1
    seconds = time.monotonic() - started
    if summary_json:
        sys.stderr.write(orjson.dumps({"summary": summary.as_dict(), "policy_version": policy.version}).decode() + "\n")
    else:
        sys.stderr.write(summary.render(seconds) + f"\n  policy:    {policy.version}\n")
    return 0
