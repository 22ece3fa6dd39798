"""Shared fixtures for the pure-core unit tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from worker.core import Policy, load_bundled_policy

VALID_EVENT: dict[str, Any] = {
    "event_id": "9f1c-0001",
    "event_type": "product.upserted",
    "occurred_at": "2026-11-29T10:00:00Z",
    "product": {
        "id": "P-1001",
        "version": 7,
        "title": "Kemeja batik pria lengan panjang",
        "seller": {"id": "S-88", "country": "CN"},
        "ship_from_country": "CN",
        "category": {"id": "aa-1-13", "path": "Apparel & Accessories > Clothing > Clothing Tops"},
        "hs_code": "6205.20",
        "price": {"amount": "12.50", "currency": "USD"},
    },
}


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_bundled_policy()


def make_event(**changes: Any) -> dict[str, Any]:
    """A valid event with dotted-path changes applied; a value of `...` deletes the key."""
    event = copy.deepcopy(VALID_EVENT)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = event
        for key in parents:
            target = target[key]
        if value is ...:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return event
