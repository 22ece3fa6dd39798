"""`compliance-worker simulate`: how many decisions a new policy would change on a catalog, before anyone publishes it."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

from worker.core import InvalidEvent, Policy, ProductEvent, classify, decode_event
from worker.core.classify import Decision, Reason
from worker.core.clock import format_timestamp
from worker.core.state import ProductState, decide

DIRECTIONS = (("allow", "block"), ("block", "allow"))


def cluster_label(before: str | None, after: str | None) -> str:
    """The cluster a change belongs to; ``crafts→none`` when the new policy also moved the product."""
    before_name, after_name = before or "none", after or "none"
    return before_name if before_name == after_name else f"{before_name}→{after_name}"


@dataclass
class SimulationSummary:
    """Counts only (a handful of keys each); memory stays constant on any catalog size unless a policy has review
    signals, which need each product's state (``products``)."""

    lines: int = 0
    decided: int = 0  # under both policies
    unchanged: Counter[str] = field(default_factory=Counter)  # by decision
    reclassified: int = 0  # same decision, another cluster
    changes: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (from, to, cluster label)
    invalid_both: Counter[str] = field(default_factory=Counter)  # by code ('A/B' when the codes differ)
    invalid_current_only: Counter[str] = field(default_factory=Counter)
    invalid_new_only: Counter[str] = field(default_factory=Counter)
    # Review signals: each line decided against its product's earlier lines, per policy, as the worker does.
    current_review: bool = False  # whether the policy raises review signals
    new_review: bool = False
    products: int = 0  # products remembered (stateful only)
    signals_current: Counter[str] = field(default_factory=Counter)  # raised, by reason code
    signals_new: Counter[str] = field(default_factory=Counter)
    held_current: int = 0  # decisions a hold kept blocked
    held_new: int = 0

    @property
    def stateful(self) -> bool:
        """Whether lines were decided against their product's earlier lines (a policy has review signals)."""
        return self.current_review or self.new_review

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
            "review": {
                "stateful": self.stateful,
                "products": self.products,
                "signals": {"current": dict(sorted(self.signals_current.items())), "new": dict(sorted(self.signals_new.items()))},
                "held": {"current": self.held_current, "new": self.held_new},
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
        if not self.stateful:
            out.append("  review signals:              off in both policies (each line decided on its own)")
            return "\n".join(out)
        out.append(f"  review signals, current:     {self._signals_line(self.current_review, self.signals_current, self.held_current)}")
        out.append(f"  review signals, new:         {self._signals_line(self.new_review, self.signals_new, self.held_new)}")
        out.append(f"  products remembered:         {self.products:,} (each line decided against its product's earlier ones)")
        return "\n".join(out)

    @staticmethod
    def _signals_line(on: bool, raised: Counter[str], held: int) -> str:
        if not on:
            return "off"
        return f"{_counts(raised) if raised else 'none raised'}; {held:,} decisions held"


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in sorted(counter.items())) or "none"


def _decide(event: Any, policy: Policy, now: float) -> tuple[Decision | None, str | None]:
    """The decision, or the dead-letter code when this policy cannot decide the event."""
    try:
        return classify(event, policy, now), None
    except InvalidEvent as exc:
        return None, str(exc.code)


class _Products:
    """Each product's state under one policy, in the worker's stored form (about 300 bytes a product)."""

    def __init__(self, policy: Policy, signals: Counter[str]) -> None:
        self.policy = policy
        self.states: dict[str, bytes] = {}
        self.signals = signals
        self.held = 0

    def decide(self, event: ProductEvent, now: float) -> tuple[Decision | None, str | None]:
        stored = self.states.get(event.product_id)
        previous = None if stored is None else ProductState.decode(event.product_id.encode(), stored)
        try:
            transition = decide(event, self.policy, previous, now)
        except InvalidEvent as exc:
            return None, str(exc.code)
        if transition.state is not None:
            self.states[event.product_id] = transition.state.encode()
        self.signals.update(transition.signals)
        self.held += transition.decision.reasons[0] == Reason.HELD_FOR_REVIEW
        return transition.decision, None


def simulate_lines(lines: Iterable[bytes], current: Policy, new: Policy, now: float) -> SimulationSummary:
    """Decide every non-blank line under both policies at the same ``now``; count what differs.

    When either policy has review signals, each line is decided as the worker would, against what the
    same policy decided for its product's earlier lines (previous decision, stale versions, signals,
    holds), so memory grows with the number of distinct products; otherwise every line on its own.
    """
    summary = SimulationSummary(current_review=bool(current.review_signals), new_review=bool(new.review_signals))
    products = (_Products(current, summary.signals_current), _Products(new, summary.signals_new)) if summary.stateful else None
    line_number = 0
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = decode_event(line.rstrip(b"\r\n"))
        except InvalidEvent as exc:
            summary.invalid_both[str(exc.code)] += 1  # decoding does not depend on the policy
            continue
        if products is None:
            (before, before_error), (after, after_error) = _decide(event, current, now), _decide(event, new, now)
        else:
            (before, before_error), (after, after_error) = products[0].decide(event, now), products[1].decide(event, now)
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
    if products is not None:
        summary.held_current, summary.held_new = products[0].held, products[1].held
        summary.products = len(products[0].states.keys() | products[1].states.keys())
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
