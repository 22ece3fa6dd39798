"""The agent supervisor is mode's own, and tells who restarts a crashed agent (and not one cancelled by a rebalance)."""

from __future__ import annotations

import asyncio

from mode import OneForOneSupervisor, Service

from worker.kafka.supervisor import supervisor_telling


class Actor(Service):
    """Stands for a Faust agent's actor: a service its supervisor restarts when it is marked crashed."""

    starts = 0

    async def on_start(self) -> None:
        self.starts += 1


async def crash_and_wait_for_restart(reason: BaseException) -> tuple[list[tuple[str, BaseException | None]], Actor]:
    told: list[tuple[str, BaseException | None]] = []
    supervisor_class = supervisor_telling(lambda actor, why: told.append((actor, why)))
    assert issubclass(supervisor_class, OneForOneSupervisor)
    supervisor = supervisor_class()
    actor = Actor()
    supervisor.add(actor)
    await supervisor.start()
    try:
        assert actor.starts == 1
        await actor.crash(reason)  # what Faust's Agent._execute_actor does when the agent's coroutine raises
        async with asyncio.timeout(10):
            while actor.starts < 2:
                supervisor.wakeup()  # as Faust does after marking an actor crashed; else it looks every 5 s
                await asyncio.sleep(0.01)
        assert not actor.crashed
    finally:
        await supervisor.stop()
    return told, actor


def test_a_crashed_agent_is_restarted_and_the_restart_told() -> None:
    reason = RuntimeError("delivery failed")
    told, actor = asyncio.run(crash_and_wait_for_restart(reason))
    assert told == [(actor.shortlabel, reason)]


def test_an_agent_cancelled_by_a_rebalance_is_restarted_without_being_told() -> None:
    told, _actor = asyncio.run(crash_and_wait_for_restart(asyncio.CancelledError()))
    assert told == []
