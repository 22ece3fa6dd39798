"""`compliance-worker simulate`: how many decisions a new policy would change on a catalog, before anyone publishes it."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from worker.core import InvalidEvent, Policy, classify, decode_event
from worker.core.classify import Decision
from worker.core.clock import format_timestamp

DIRECTIONS = (("allow", "block"), ("block", "allow"))


def cluster_label(before: str | None, after: str | None) -> str:
    """The cluster a change belongs to; ``crafts→none`` when the new policy also moved the product."""
    before_name, after_name = before or "none", after or "none"
    return before_name if before_name == after_name else f"{before_name}→{after_name}"


@dataclass
class SimulationSummary:
    """Counts only (a handful of keys each), so memory stays constant on any catalog size."""

    lines: int = 0
    decided: int = 0  # under both policies
    unchanged: Counter[str] = field(default_factory=Counter)  # by decision
    reclassified: int = 0  # same decision, another cluster
    changes: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (from, to, cluster label)
    invalid_both: Counter[str] = field(default_factory=Counter)  # by code ('A/B' when the codes differ)
    invalid_current_only: Counter[str] = field(default_factory=Counter)
    invalid_new_only: Counter[str] = field(default_factory=Counter)

    @property
    def changed(self) -> int:
        return sum(self.changes.values())

    @property
    def invalid(self) -> int:
        return sum(self.invalid_both.values()) + sum(self.invalid_current_only.values()) + sum(self.invalid_new_only.values())

    def by_direction(self, before: str, after: str) -> Counter[str]:
        return Counter({label: count for (old, new, label), count in self.changes.items() if (old, new) == (before, after)})

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "decided": self.decided,
            "invalid": self.invalid,
            "changed": self.changed,
            "changes": {
                f"{before}_to_{after}": {
                    "total": sum(counts.values()),
                    "clusters": dict(sorted(counts.items())),
                }
                for before, after in DIRECTIONS
                for counts in [self.by_direction(before, after)]
            },
            "unchanged": {decision: self.unchanged.get(decision, 0) for decision in ("allow", "block")},
            "reclassified": self.reclassified,
            "errors": {
                "both": dict(sorted(self.invalid_both.items())),
                "current_only": dict(sorted(self.invalid_current_only.items())),
                "new_only": dict(sorted(self.invalid_new_only.items())),
            },
        }

    def render(self) -> str:
        share = f" ({self.changed / self.decided:.2%} of those decided)" if self.decided else ""
        out = [
            f"simulated {self.lines:,} lines: {self.decided:,} decided under both policies, "
            f"{self.invalid:,} invalid under at least one",
            f"  changed:   {self.changed:,} decisions{share}",
        ]
        for before, after in DIRECTIONS:
            counts = self.by_direction(before, after)
            out.append(f"    {before}→{after} {sum(counts.values()):>9,}" + (f": {_counts(counts)}" if counts else ""))
        out.append(
            f"  unchanged: allow {self.unchanged.get('allow', 0):,}, block {self.unchanged.get('block', 0):,}"
            f" ({self.reclassified:,} of them in another cluster)"
        )
        out.append("  invalid under both:          " + _counts(self.invalid_both))
        out.append("  invalid only under current:  " + _counts(self.invalid_current_only))
        out.append("  invalid only under new:      " + _counts(self.invalid_new_only))
        return "\n".join(out)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in sorted(counter.items())) or "none"


def _decide(event: Any, policy: Policy, now: float) -> tuple[Decision | None, str | None]:
    """The decision, or the dead-letter code when this policy cannot decide the event."""
    try:
        return classify(event, policy, now), None
    except InvalidEvent as exc:
        return None, str(exc.code)


def simulate_lines(lines: Iterable[bytes], current: Policy, new: Policy, now: float) -> SimulationSummary:
    """Decide every non-blank line under both policies at the same ``now``; count what differs."""
    summary = SimulationSummary()
    line_number = 0
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = decode_event(line.rstrip(b"\r\n"))
        except InvalidEvent as exc:
            summary.invalid_both[str(exc.code)] += 1  # decoding does not depend on the policy
            continue
        (before, before_error), (after, after_error) = _decide(event, current, now), _decide(event, new, now)
        if before is None or after is None:
            if after_error is None:
                summary.invalid_current_only[str(before_error)] += 1
            elif before_error is None:
                summary.invalid_new_only[after_error] += 1
            else:
                summary.invalid_both[before_error if before_error == after_error else f"{before_error}/{after_error}"] += 1
            continue
        summary.decided += 1
        if before.decision != after.decision:
            summary.changes[before.decision, after.decision, cluster_label(before.cluster, after.cluster)] += 1
        else:
            summary.unchanged[before.decision] += 1
            if before.cluster != after.cluster:
                summary.reclassified += 1
    summary.lines = line_number
    return summary


def describe_policy(policy: Policy, source: str) -> dict[str, str]:
    return {"version": policy.version, "digest": policy.digest, "source": source}


def run_simulate(
    path: str, current: Policy, new: Policy, *, current_source: str, new_source: str, now: float | None = None,
    as_json: bool = False, out: TextIO | None = None,
) -> int:
    """The command: 0 when the catalog was read to the end, 1 when it could not be read."""
    out = out if out is not None else sys.stdout
    now = time.time() if now is None else now
    try:
        if path == "-":
            summary = simulate_lines(sys.stdin.buffer, current, new, now)
        else:
            with open(path, "rb") as handle:
                summary = simulate_lines(handle, current, new, now)
    except OSError as exc:
        sys.stderr.write(f"compliance-worker simulate: cannot read {path}: {exc.strerror or exc}\n")
        return 1
    current_info, new_info = describe_policy(current, current_source), describe_policy(new, new_source)
    if as_json:
        document = {
            "summary": summary.as_dict(), "current_policy": current_info, "new_policy": new_info, "at": format_timestamp(now),
        }
        out.write(orjson.dumps(document).decode() + "\n")
    else:
        out.write(
            f"current policy {current.version} ({current_source}) vs new policy {new.version} ({new_source}), "
            f"decided at {format_timestamp(now)}\n"
        )
        out.write(summary.render() + "\n")
    out.flush()
    return 0
