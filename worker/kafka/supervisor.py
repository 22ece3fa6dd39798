"""Faust's agent supervisor (mode's OneForOneSupervisor) that tells who restarts a crashed agent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mode import OneForOneSupervisor
from mode.types import ServiceT

# Told the restarted actor (as mode names it) and why it died.
OnRestart = Callable[[str, BaseException | None], None]


def supervisor_telling(on_restart: OnRestart) -> type[OneForOneSupervisor]:
    """A supervisor class for Faust's ``agent_supervisor`` setting: mode's own, calling ``on_restart`` per restart.

    When an agent's coroutine raises, Faust marks its actor crashed and mode's
    supervisor starts a replacement at once ("Restarting dead <Actor...>"), up to
    100 restarts a second; nothing outside the log hears of it. An actor cancelled
    by a rebalance is restarted the same way without having crashed: not told.
    """

    class AgentSupervisor(OneForOneSupervisor):
        async def restart_service(self, service: ServiceT) -> None:
            reason = service.crash_reason
            if not isinstance(reason, asyncio.CancelledError):
                on_restart(service.shortlabel, reason)
            await super().restart_service(service)

    return AgentSupervisor
