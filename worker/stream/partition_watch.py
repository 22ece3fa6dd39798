"""Stops the worker when the topic its state follows grows under it, before an event is decided without its state."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from faust.types import TP

log = logging.getLogger(__name__)

# Faust's consumer learns of new partitions at its metadata refresh (every 5 minutes) and then takes them with no
# state. Asked this often, the worker stops long before: producers that already write there leave events waiting.
CHECK_INTERVAL_SECONDS = 10.0
EXIT_CODE = 2  # as at start: the same refusal, so a restarted pod says the same one line


def grown_partitions(assigned: Iterable[TP], topic: str, partitions: int) -> list[int]:
    """The partitions of ``topic`` in ``assigned`` that the state changelog (``partitions`` of them) does not have."""
    return sorted(tp.partition for tp in assigned if tp.topic == topic and tp.partition >= partitions)


def stop_this_process() -> None:
    """As an operator's SIGTERM: Faust stops gracefully (acked offsets committed), then the exit code is replaced."""
    os.kill(os.getpid(), signal.SIGTERM)


class PartitionWatch:
    """Compares the state topic's partition count with the changelog's, now and then and at every assignment.

    Found different, it logs the refusal the worker gives at start (one line,
    ``"event": "partitions_mismatch"``), pauses what it was assigned and stops
    the process, which then exits 2: measured before, a worker that took the new
    partitions decided their products with no state (103 of 103 wrong) and
    crash-looped on the changelog writes (docs/operations.md#growing-the-input).
    """

    def __init__(
        self, topic: str, changelog: str, partitions: int, message: Callable[[dict[str, int]], str],
        describe: Callable[[list[str]], Awaitable[dict[str, int]]], stop: Callable[[], None] = stop_this_process,
    ) -> None:
        self.topic, self.changelog, self.partitions = topic, changelog, partitions
        self._message, self._describe, self._stop = message, describe, stop
        self.refusal: str | None = None  # set once: the process is stopping and exits EXIT_CODE

    def refuse(self, counts: dict[str, int]) -> None:
        if self.refusal is not None:
            return
        self.refusal = self._message(counts)
        log.critical(self.refusal, extra={"event": "partitions_mismatch", "partitions": counts})
        self._stop()

    def check_assignment(self, assigned: Iterable[TP], pause: Callable[[set[TP]], Any]) -> bool:
        """False (and the worker stopping, ``assigned`` paused) when a partition the changelog lacks was assigned."""
        assigned = set(assigned)
        grown = grown_partitions(assigned, self.topic, self.partitions)
        if not grown:
            return True
        pause(assigned)
        self.refuse({self.topic: grown[-1] + 1, self.changelog: self.partitions})
        return False

    async def check(self) -> bool:
        """False (and the worker stopping) when the broker says the state topic has more partitions than expected."""
        counts = await self._describe([self.topic, self.changelog])
        if counts.get(self.topic, self.partitions) == self.partitions:
            return True
        self.refuse(counts)
        return False

    async def watch_forever(self) -> None:
        await self.watch(CHECK_INTERVAL_SECONDS)

    async def watch(self, interval: float) -> None:
        try:
            while self.refusal is None:
                await asyncio.sleep(interval)
                try:
                    await self.check()
                except Exception as exc:  # noqa: BLE001 - an unreachable broker is reported by the probe; ask later
                    log.debug("checking the partitions of %s failed: %r", self.topic, exc)
        finally:
            close = getattr(self._describe, "close", None)
            if close is not None:  # its client, when it keeps one (the worker's does)
                await asyncio.shield(close())


def refusal_message(topic: str, input_topic: str, app_id: str, changelog: str) -> Callable[[dict[str, int]], str]:
    """The one line the worker refuses with, at start and while running, for the partition counts found."""

    def message(counts: dict[str, int]) -> str:
        what = "the input" if topic == input_topic else "the repartition topic"
        return (
            f"{what} {topic} has {counts.get(topic)} partitions but the state changelog {changelog} "
            f"has {counts.get(changelog)}: each product's state would be looked for on the wrong partition. Stop every "
            f"worker of {app_id} and follow docs/operations.md#growing-the-input (compliance-worker state migrate)"
        )

    return message
