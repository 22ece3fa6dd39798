"""Samples of the worker's /metrics text; a missing series fails the test, it never reads as 0."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


def series(text: str, name: str) -> dict[Labels, float]:
    """Every sample named ``name`` (e.g. ``compliance_decisions_total``) by its labels; none at all fails, so a
    renamed metric never reads as an empty family."""
    found = {
        frozenset(found.labels.items()): found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == name
    }
    if not found:
        raise AssertionError(f"no {name} on /metrics")
    return found


def sample(text: str, name: str, **labels: str) -> float:
    """The one sample of ``name`` with exactly these labels; absent fails."""
    found = series(text, name)
    wanted = frozenset(labels.items())
    if wanted not in found:
        raise AssertionError(f"no {name}{labels} on /metrics (its series: {sorted(map(sorted, found))})")
    return found[wanted]


def total(text: str, name: str) -> float:
    """The sum over every series of ``name`` (at least one must exist)."""
    return sum(series(text, name).values())


def label_values(text: str, name: str, label: str) -> set[str]:
    """The values ``label`` takes over the series of ``name`` (at least one must exist)."""
    return {dict(labels)[label] for labels in series(text, name)}


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


def wait_for_metrics(read: Callable[[], str], check: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
    """Poll /metrics until ``check(text)`` holds and return that text; a series still missing at the deadline
    fails naming it (``check`` reads samples with the helpers above, which raise on absence)."""
    deadline = time.monotonic() + timeout
    while True:
        text = read()
        missing: AssertionError | None = None
        try:
            if check(text):
                return text
        except AssertionError as error:
            missing = error
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout}s" + (f" ({missing})" if missing else ""))
        time.sleep(0.2)
