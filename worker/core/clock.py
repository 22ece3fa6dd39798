"""UTC timestamps in the decision format (2026-11-29T10:00:00.123Z), cheap enough for every event."""

from __future__ import annotations

import time

_cached_second = -1
_cached_prefix = ""
_last: tuple[float, str] = (-1.0, "")


def format_timestamp(epoch_seconds: float) -> str:
    """Millisecond RFC 3339 UTC; the per-second prefix is formatted once and reused."""
    global _cached_second, _cached_prefix, _last
    last_epoch, last_text = _last
    if epoch_seconds == last_epoch:
        return last_text  # the worker stamps a whole batch with one time
    second = int(epoch_seconds)
    if second != _cached_second:
        _cached_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _cached_second = second
    text = f"{_cached_prefix}.{int((epoch_seconds - second) * 1000):03d}Z"
    _last = (epoch_seconds, text)
    return text


def utc_now() -> str:
    return format_timestamp(time.time())
