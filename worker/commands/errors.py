"""How a command names a broker error in its one line (the overrides, dead-letters and state commands)."""

from __future__ import annotations

import asyncio


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    name, text = exc.__class__.__name__, str(exc)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"  # aiokafka's errors name themselves
