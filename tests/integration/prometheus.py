"""One sample of the worker's /metrics text; a missing series fails the test, it never reads as 0."""

from __future__ import annotations

import re
import time
from collections.abc import Callable


def sample(text: str, name: str, **labels: str) -> float:
    wanted = sorted(f'{key}="{value}"' for key, value in labels.items())
    for found, value in re.findall(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", text, re.MULTILINE):
        if sorted(part for part in found.split(",") if part) == wanted:
            return float(value)
    raise AssertionError(f"no {name}{labels} on /metrics")


def wait_for_sample(read: Callable[[], str], name: str, expected: float, timeout: float = 30.0, **labels: str) -> float:
    """Poll until the sample reads ``expected`` (a count the worker updates just after the broker acked the output)
    and return what it last read; the caller asserts on it, so a wrong or missing count still fails."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = sample(read(), name, **labels)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        else:
            if value == expected or time.monotonic() > deadline:
                return value
        time.sleep(0.2)
