"""aiokafka's metadata refresh waits after a failed attempt instead of retrying at once (aio-libs/aiokafka#496)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.client import AIOKafkaClient

# Kafka's Java client backs off reconnects exponentially up to reconnect.backoff.max.ms (1 s by default): the
# same cap, so a worker notices a returning broker within about a second.
MAX_BACKOFF_SECONDS = 1.0

_original_metadata_update = AIOKafkaClient._metadata_update


def backoff_seconds(failures: int, base: float, cap: float = MAX_BACKOFF_SECONDS) -> float:
    """The wait after the ``failures``-th failed attempt in a row: base, 2 x base, 4 x base, ... at most ``cap``."""
    return min(cap, base * 2 ** min(max(failures, 1) - 1, 32))


async def _metadata_update_with_backoff(self: AIOKafkaClient, cluster_metadata: Any, topics: Any) -> bool:
    # Upstream, a failed connect asks for another metadata update, which runs at once and fails again: with the
    # only broker down that was ~1,200 connection attempts and 2,400 error lines per second from one worker.
    updated = bool(await _original_metadata_update(self, cluster_metadata, topics))
    if updated:
        self._compliance_failed_updates = 0
    else:
        failures = getattr(self, "_compliance_failed_updates", 0) + 1
        self._compliance_failed_updates = failures
        await asyncio.sleep(backoff_seconds(failures, self._retry_backoff))
    return updated


def install() -> None:
    """Patch every aiokafka client of this process (Faust's consumer and producer, and ours); idempotent."""
    AIOKafkaClient._metadata_update = _metadata_update_with_backoff  # type: ignore[method-assign]
