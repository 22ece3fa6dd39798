"""Readiness: up, connected, not wedged and past the first recovery; rebalances, idleness and recoveries are notes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, Counter

from worker.stream.health import (
    AGENT_RESTART_WINDOW_SECONDS, AGENT_RESTARTING, BROKER_UNREACHABLE, NO_PARTITIONS, REBALANCING, RECOVERING,
    STARTING, AgentRestarts, Observed, readiness,
)

SETTLED = Observed(
    broker_reachable=True, recovered=True, seconds_since_agent_restart=None, assigned_partitions=[0, 3],
    rebalancing=False, recovering=False,
)


def test_a_settled_worker_with_partitions_is_ready_with_nothing_to_note() -> None:
    verdict = readiness(SETTLED)
    assert verdict.ready and verdict.reasons == [] and verdict.notes == []


@pytest.mark.parametrize("observed, notes", [
    pytest.param(replace(SETTLED, assigned_partitions=[]), [NO_PARTITIONS], id="idle: more workers than partitions"),
    pytest.param(replace(SETTLED, rebalancing=True), [REBALANCING], id="a later rebalance"),
    pytest.param(replace(SETTLED, rebalancing=True, recovering=True, assigned_partitions=[]),
                 [REBALANCING, RECOVERING, NO_PARTITIONS], id="a later recovery, everything revoked"),
])
def test_what_every_pod_of_the_group_goes_through_at_once_is_a_note_not_a_reason(
    observed: Observed, notes: list[str],
) -> None:
    """Otherwise a rebalance made every pod unready together, and an idle surplus pod never became ready."""
    verdict = readiness(observed)
    assert verdict.ready and verdict.reasons == [] and verdict.notes == notes


@pytest.mark.parametrize("observed, reasons", [
    pytest.param(replace(SETTLED, broker_reachable=False), [BROKER_UNREACHABLE], id="broker"),
    pytest.param(replace(SETTLED, recovered=False, rebalancing=True, assigned_partitions=[]), [STARTING],
                 id="first recovery"),
    pytest.param(replace(SETTLED, seconds_since_agent_restart=0.0), [AGENT_RESTARTING], id="agent just restarted"),
    pytest.param(replace(SETTLED, seconds_since_agent_restart=AGENT_RESTART_WINDOW_SECONDS - 1), [AGENT_RESTARTING],
                 id="agent restarted within the window"),
    pytest.param(replace(SETTLED, broker_reachable=False, recovered=False, seconds_since_agent_restart=3.0),
                 [BROKER_UNREACHABLE, STARTING, AGENT_RESTARTING], id="all, in a fixed order"),
])
def test_not_ready_while_disconnected_before_its_first_recovery_or_with_a_crashing_agent(
    observed: Observed, reasons: list[str],
) -> None:
    verdict = readiness(observed)
    assert not verdict.ready and verdict.reasons == reasons


def test_ready_again_once_the_last_agent_restart_is_older_than_the_window() -> None:
    assert readiness(replace(SETTLED, seconds_since_agent_restart=AGENT_RESTART_WINDOW_SECONDS)).ready


def test_the_codes_are_stable_strings() -> None:
    """Dashboards, alerts and runbooks match on them (README, docs/operations.md)."""
    assert (BROKER_UNREACHABLE, STARTING, AGENT_RESTARTING) == (
        "broker_unreachable", "initial_recovery_pending", "agent_restarting",
    )
    assert (REBALANCING, RECOVERING, NO_PARTITIONS) == ("rebalancing", "recovering", "no_partitions_assigned")


def test_agent_restarts_are_counted_and_the_last_one_remembered(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    counter = Counter("compliance_agent_restarts", "restarts", registry=CollectorRegistry())
    restarts = AgentRestarts(counter, clock=lambda: now[0])
    assert restarts.seconds_since_last() is None and restarts.count == 0
    restarts.restarted("<Actor: decide>", RuntimeError("delivery failed"))
    now[0] = 130.0
    restarts.restarted("<Actor: decide>", RuntimeError("delivery failed"))
    now[0] = 135.0
    assert restarts.count == 2 and counter._value.get() == 2
    assert restarts.seconds_since_last() == 5.0
    (record, _) = [r for r in caplog.records if r.name == "worker.health"]
    assert "delivery failed" in record.getMessage() and record.event == "agent_restarted"  # type: ignore[attr-defined]
