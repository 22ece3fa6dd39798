"""Readiness: why a worker should not get traffic or count as available, as stable reason codes."""

from __future__ import annotations

BROKER_UNREACHABLE = "broker_unreachable"  # no metadata round trip to any broker within the check's timeout
REBALANCING = "rebalancing"  # a consumer-group rebalance (or the recovery after it) is under way
NO_PARTITIONS = "no_partitions_assigned"  # nothing of the input topic to consume (idle, or not yet joined)
UNREADABLE_BATCH = "unreadable_batch"  # a partition stopped at a batch the worker cannot read (corrupt, unknown codec)


def readiness(
    assigned_partitions: list[int], broker_reachable: bool, rebalancing: bool, unreadable: bool = False,
) -> list[str]:
    """The reasons the worker is not ready, in a fixed order; an empty list means ready."""
    reasons = []
    if not broker_reachable:
        reasons.append(BROKER_UNREACHABLE)
    if rebalancing:
        reasons.append(REBALANCING)
    if not assigned_partitions:
        reasons.append(NO_PARTITIONS)
    if unreadable:
        reasons.append(UNREADABLE_BATCH)
    return reasons
