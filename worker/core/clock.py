"""UTC timestamps in the decision format (2026-11-29T10:00:00.123Z), cheap enough for every event."""

from __future__ import annotations

import time

_cached_second = -1
_cached_prefix = ""


def format_timestamp(epoch_seconds: float) -> str:
    """Millisecond RFC 3339 UTC; the per-second prefix is formatted once and reused."""
    global _cached_second, _cached_prefix
    second = int(epoch_seconds)
    if second != _cached_second:
        _cached_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _cached_second = second
    return f"{_cached_prefix}.{int((epoch_seconds - second) * 1000):03d}Z"


def utc_now() -> str:
    return format_timestamp(time.time())
