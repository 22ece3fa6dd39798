"""GET /products/{id}: a product's decision in force and why, answered by whichever worker of the group holds it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
import faust

from worker.core.clock import format_timestamp
from worker.core.partitioning import PARTITIONERS
from worker.core.state import ProductState
from worker.stream.runtime import Runtime
from worker.stream.state_store import TableStateStore

ROUTED_HEADER = "X-Compliance-Routed"  # a request one worker asked another: answer from local state only
PEER_TIMEOUT_SECONDS = 5.0


def product_body(product_id: str, state: ProductState, override: Any, now: float) -> dict[str, Any]:
    """The product as GET /products/{id} shows it (the `status` command prints the same for a person)."""
    facts = state.facts
    price = None if facts.price_amount is None else {"amount": facts.price_amount, "currency": facts.price_currency}
    return {
        "product_id": product_id,
        "decision": state.decision,
        "reasons": list(state.reasons),
        "cluster": state.cluster,
        "cross_border": state.cross_border,
        "policy_version": state.policy_version,
        "decided_at": format_timestamp(state.decided_at_ms / 1000) if state.decided_at_ms else None,
        "product_version": facts.product_version,
        "decision_id": state.decision_id,
        "facts": {
            "event_id": facts.event_id, "seller_id": facts.seller_id, "seller_country": facts.seller_country,
            "ship_from_country": facts.ship_from_country, "category_path": facts.category_path,
            "category_id": facts.category_id, "hs_code": facts.hs_code, "price": price,
            "occurred_at": facts.occurred_at,
        },
        "override": None if override is None else {**override.describe(), "in_force": override.in_force(now)},
    }


class ProductLookup:
    """Finds a product in the state partitions this worker owns, else asks the workers that own the others.

    The partition that holds a product's state is where its events arrive, which the
    upstream's partitioner chose (Java clients and aiokafka hash keys with murmur2,
    librdkafka's default with CRC32): Faust's ``table_route`` assumes its own. So the
    owners of the partitions every common partitioner would pick are asked first, then
    every other worker of the group; the first that holds the product answers.
    """

    def __init__(
        self, app: faust.App, runtime: Runtime, store: TableStateStore, state_topic: str, changelog_topic: str,
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.store = store
        self.state_topic = state_topic
        self.changelog_topic = changelog_topic

    def owned(self) -> list[int]:
        return sorted(tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.state_topic)

    def local(self, product_id: str) -> tuple[int, dict[str, Any]] | None:
        key = product_id.encode()
        for partition in self.owned():
            data = self.store.get(key, partition)
            if data is not None:
                now = time.time()
                body = product_body(product_id, ProductState.decode(key, data), self.runtime.overrides.get(key), now)
                return partition, body
        return None

    def busy(self) -> str | None:
        """Why this worker cannot say a product is unknown now (its state may be incomplete), or None."""
        if self.app.rebalancing:
            return "rebalancing"
        if not self.app.tables.actives_ready:
            return "recovering"
        return None

    def peers(self, product_id: str) -> list[str]:
        """The other workers' web URLs: the likely owners first."""
        mine = str(self.app.conf.canonical_url).rstrip("/")
        owners: dict[int, str] = {}
        for url, topics in self.app.assignor.table_metadata(self.changelog_topic).items():
            for partition in topics.get(self.changelog_topic, ()):
                owners[partition] = str(url).rstrip("/")
        count = len(owners) or 1
        key = product_id.encode()
        likely = [owners.get(partition_of(key, count)) for partition_of in PARTITIONERS.values()]
        ordered = [url for url in (*likely, *sorted(set(owners.values()))) if url and url != mine]
        return list(dict.fromkeys(ordered))

    async def answer(self, product_id: str, routed: bool) -> tuple[int, dict[str, Any]]:
        found = self.local(product_id)
        if found is not None:
            partition, body = found
            return 200, {**body, "answered_by": str(self.app.conf.canonical_url), "partition": partition}
        busy = self.busy()
        if routed:
            return (503, _unavailable(product_id, busy)) if busy else (404, _unknown(product_id, []))
        asked = []
        unavailable = busy
        for url in self.peers(product_id):
            asked.append(url)
            status, body = await self._ask(url, product_id)
            if status == 200:
                return 200, body
            if status != 404:
                unavailable = unavailable or (body.get("reason") if isinstance(body, dict) else None) or "owner_unreachable"
        if unavailable:
            return 503, {**_unavailable(product_id, unavailable), "asked": asked}
        return 404, _unknown(product_id, asked)

    async def _ask(self, url: str, product_id: str) -> tuple[int, Any]:
        try:
            async with self.app.http_client.get(
                f"{url}/products/{quote(product_id, safe='')}", headers={ROUTED_HEADER: "1"},
                timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_SECONDS),
            ) as response:
                return response.status, await response.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return 599, {"reason": "owner_unreachable"}


def _unknown(product_id: str, asked: Iterable[str]) -> dict[str, Any]:
    return {"product_id": product_id, "error": "unknown product", "asked": list(asked)}


def _unavailable(product_id: str, reason: str | None) -> dict[str, Any]:
    return {
        "product_id": product_id, "error": "the state that holds it is not available right now; try again shortly",
        "reason": reason or "owner_unreachable",
    }
