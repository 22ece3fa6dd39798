"""Readiness: whether a worker counts as available (rollouts, disruption budgets), as stable reason and note codes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

log = logging.getLogger("worker.health")

# Reasons: the worker is not ready while any of them holds.
BROKER_UNREACHABLE = "broker_unreachable"  # no metadata round trip to any broker within the check's timeout
STARTING = "initial_recovery_pending"  # not yet joined the group and recovered the state it was first assigned
AGENT_RESTARTING = "agent_restarting"  # the decide agent crashed and was restarted within AGENT_RESTART_WINDOW_SECONDS

# Notes: what the worker is doing, reported without making it unready. A consumer serves no traffic, so readiness
# only says "up, connected, not wedged, state local"; a rebalance (every pod of the group at once), an idle worker
# (more workers than partitions) or lag are in the metrics and alerts instead (docs/operations.md#probes).
REBALANCING = "rebalancing"  # a consumer-group rebalance (or the recovery after it) is under way
RECOVERING = "recovering"  # restoring state from the changelog before its partitions' events are decided
NO_PARTITIONS = "no_partitions_assigned"  # nothing of the input topic to consume: idle, a standby at most
UNREADABLE_BATCH = "unreadable_batch"  # a partition stopped at a batch the worker cannot read (corrupt, unknown codec)

# A crashed agent is restarted at once by Faust's supervisor; a crash loop restarts it on every batch. A restart
# within this window makes the worker unready: a rollout of a version that crash-loops stops at its first pod.
AGENT_RESTART_WINDOW_SECONDS = 120.0


@dataclass(frozen=True)
class Observed:
    """What /readyz looks at, read from the running app."""

    broker_reachable: bool
    recovered: bool  # the first recovery after start is done (or there was nothing to recover)
    seconds_since_agent_restart: float | None  # None: no agent restart since start
    assigned_partitions: list[int]
    rebalancing: bool
    recovering: bool
    unreadable: bool = False  # a partition stopped at a batch it cannot read (worker/kafka/unreadable.py)


@dataclass(frozen=True)
class Readiness:
    reasons: list[str]  # why not ready, in a fixed order
    notes: list[str]  # informational, in a fixed order

    @property
    def ready(self) -> bool:
        return not self.reasons


def readiness(observed: Observed) -> Readiness:
    """Ready when up, connected, not wedged and past its first recovery; what else is going on goes to the notes."""
    reasons = []
    if not observed.broker_reachable:
        reasons.append(BROKER_UNREACHABLE)
    if not observed.recovered:
        reasons.append(STARTING)
    since = observed.seconds_since_agent_restart
    if since is not None and since < AGENT_RESTART_WINDOW_SECONDS:
        reasons.append(AGENT_RESTARTING)
    if observed.unreadable:
        reasons.append(UNREADABLE_BATCH)  # wedged on that partition: an operator must act (docs/runbook.md)
    notes = []
    if observed.rebalancing:
        notes.append(REBALANCING)
    if observed.recovering:
        notes.append(RECOVERING)
    if not observed.assigned_partitions:
        notes.append(NO_PARTITIONS)
    return Readiness(reasons, notes)


class AgentRestarts:
    """Restarts of crashed agents by Faust's supervisor: counted, logged, and the last one remembered for readiness."""

    def __init__(self, counter: Counter, clock: Callable[[], float] = time.monotonic) -> None:
        self.counter = counter
        self.clock = clock
        self.count = 0
        self.last: float | None = None

    def restarted(self, agent: str, reason: BaseException | None) -> None:
        self.count += 1
        self.counter.inc()
        self.last = self.clock()
        log.error(
            "agent %s crashed (%r) and is being restarted; the worker is not ready for %.0fs after the last restart",
            agent, reason, AGENT_RESTART_WINDOW_SECONDS, extra={"event": "agent_restarted", "reason": repr(reason)},
        )

    def seconds_since_last(self) -> float | None:
        return None if self.last is None else self.clock() - self.last
