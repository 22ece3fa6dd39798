"""Whether a broker answers: a metadata round trip through the Faust producer's aiokafka client, cached briefly."""

from __future__ import annotations

import asyncio
import time

import faust

CHECK_TIMEOUT_SECONDS = 2.0
CACHE_SECONDS = 1.0


class BrokerProbe:
    """Answers /readyz's "is a broker reachable?" at most once per CACHE_SECONDS, so probes stay cheap."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._ok = False
        self._checked = float("-inf")

    async def reachable(self) -> bool:
        if time.monotonic() - self._checked < CACHE_SECONDS:
            return self._ok
        # Faust keeps no public accessor for its producer's aiokafka client.
        client = getattr(getattr(self.app.producer, "_producer", None), "client", None)
        ok = False
        if client is not None:
            try:
                ok = bool(await asyncio.wait_for(client.fetch_all_metadata(), CHECK_TIMEOUT_SECONDS))
            except Exception:  # noqa: BLE001 - any failure means "not reachable now"
                ok = False
        self._ok, self._checked = ok, time.monotonic()
        return ok
