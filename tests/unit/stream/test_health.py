"""Readiness reasons: why a worker is not ready, in a fixed order."""

from __future__ import annotations

from worker.stream.health import BROKER_UNREACHABLE, NO_PARTITIONS, REBALANCING, readiness


def test_ready_only_with_partitions_a_broker_and_no_rebalance() -> None:
    assert readiness([0, 3], broker_reachable=True, rebalancing=False) == []
    assert readiness([0], broker_reachable=False, rebalancing=False) == [BROKER_UNREACHABLE]
    assert readiness([0], broker_reachable=True, rebalancing=True) == [REBALANCING]
    assert readiness([], broker_reachable=True, rebalancing=False) == [NO_PARTITIONS]
    assert readiness([], broker_reachable=False, rebalancing=True) == [BROKER_UNREACHABLE, REBALANCING, NO_PARTITIONS]
