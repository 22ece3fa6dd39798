"""Product lookups: answered from local state, else by asking the other workers, likely owners first; honest 503s."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from worker.core import decode_event, load_bundled_policy
from worker.core.partitioning import PARTITIONERS
from worker.core.state import decide
from worker.stream.lookup import ProductLookup
from worker.stream.processing import NoOverrides

STATE = "in"
CHANGELOG = "app-decision-state-changelog"
MINE = "http://w1:6066"
EVENT = decode_event(b'{"event_id": "e-1", "product": {"id": "P-1", "seller": {"country": "CN"}, "ship_from_country": '
                     b'"CN", "category": {"path": "Apparel & Accessories > Clothing > Dresses"}}}')


class Store:
    def __init__(self, held: dict[tuple[bytes, int], bytes]) -> None:
        self.held = held

    def get(self, key: bytes, partition: int) -> bytes | None:
        return self.held.get((key, partition))


class Peers:
    """The other workers' web ports as the lookup reaches them: status and body per URL, or unreachable."""

    def __init__(self, answers: dict[str, tuple[int, Any] | None]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def get(self, url: str, headers: dict[str, str], timeout: Any) -> Any:
        base = url.split("/products/")[0]
        self.asked.append(base)
        assert headers == {"X-Compliance-Routed": "1"}
        answer = self.answers.get(base)
        return Response(answer)


class Response:
    def __init__(self, answer: tuple[int, Any] | None) -> None:
        self.answer = answer

    async def __aenter__(self) -> Response:
        if self.answer is None:
            raise asyncio.TimeoutError
        self.status = self.answer[0]
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def json(self, content_type: Any = None) -> Any:
        return self.answer[1]  # type: ignore[index]


def lookup(owned: list[int], held: dict[tuple[bytes, int], bytes], owners: dict[str, list[int]],
           peers: Peers, *, rebalancing: bool = False, recovered: bool = True) -> ProductLookup:
    app: Any = SimpleNamespace(
        consumer=SimpleNamespace(assignment=lambda: {TP(STATE, p) for p in owned} | {TP("other", 0)}),
        conf=SimpleNamespace(canonical_url=MINE), rebalancing=rebalancing,
        tables=SimpleNamespace(actives_ready=recovered),
        assignor=SimpleNamespace(table_metadata=lambda topic: {url: {topic: parts} for url, parts in owners.items()}),
        http_client=peers,
    )
    runtime: Any = SimpleNamespace(overrides=NoOverrides())
    return ProductLookup(app, runtime, Store(held), STATE, CHANGELOG)  # type: ignore[arg-type]


def answer(target: ProductLookup, product: str, routed: bool = False) -> tuple[int, dict[str, Any]]:
    return asyncio.run(target.answer(product, routed))


STORED = decide(EVENT, load_bundled_policy(), None, 1_800_000_000.0).state.encode()  # type: ignore[union-attr]


def test_a_product_held_here_is_answered_from_local_state() -> None:
    peers = Peers({})
    status, body = answer(lookup([0, 2], {(b"P-1", 2): STORED}, {MINE: [0, 2]}, peers), "P-1")
    assert status == 200 and (body["decision"], body["partition"], body["answered_by"]) == ("block", 2, MINE)
    assert body["facts"]["seller_country"] == "CN" and body["override"] is None and peers.asked == []


def test_the_likely_owners_are_asked_first_then_every_other_worker() -> None:
    owners = {MINE: [0], "http://w2:6066": [1], "http://w3:6066": [2], "http://w4:6066": [3]}
    likely = {f"http://w{p + 1}:6066" for p in (partition(b"P-9", 4) for partition in PARTITIONERS.values())} - {MINE}
    peers = Peers({url: (404, {"error": "unknown product"}) for url in owners})
    status, body = answer(lookup([0], {}, owners, peers), "P-9")
    assert status == 404 and body["error"] == "unknown product"
    assert set(peers.asked[:len(likely)]) == likely and sorted(peers.asked) == sorted(set(owners) - {MINE})


def test_the_owner_answers_for_a_product_held_elsewhere() -> None:
    owners = {MINE: [0, 1], "http://w2:6066": [2, 3]}
    theirs = {"product_id": "P-1", "decision": "allow", "answered_by": "http://w2:6066"}
    status, body = answer(lookup([0, 1], {}, owners, Peers({"http://w2:6066": (200, theirs)})), "P-1")
    assert (status, body) == (200, theirs)


@pytest.mark.parametrize(
    ("rebalancing", "recovered", "peer", "reason"),
    [
        pytest.param(True, True, (404, {}), "rebalancing", id="rebalancing-here"),
        pytest.param(False, False, (404, {}), "recovering", id="recovering-here"),
        pytest.param(False, True, (503, {"reason": "recovering"}), "recovering", id="recovering-there"),
        pytest.param(False, True, None, "owner_unreachable", id="owner-unreachable"),
    ],
)
def test_a_product_that_may_be_in_state_not_available_now_is_503_with_a_reason(
    rebalancing: bool, recovered: bool, peer: tuple[int, Any] | None, reason: str,
) -> None:
    owners = {MINE: [0, 1], "http://w2:6066": [2, 3]}
    status, body = answer(lookup([0, 1], {}, owners, Peers({"http://w2:6066": peer}), rebalancing=rebalancing,
                                 recovered=recovered), "P-1")
    assert status == 503 and body["reason"] == reason


def test_a_routed_request_is_answered_from_local_state_only() -> None:
    peers = Peers({"http://w2:6066": (200, {})})
    owners = {MINE: [0], "http://w2:6066": [1]}
    assert answer(lookup([0], {}, owners, peers), "P-1", routed=True)[0] == 404 and peers.asked == []
    assert answer(lookup([0], {}, owners, peers, recovered=False), "P-1", routed=True)[0] == 503
