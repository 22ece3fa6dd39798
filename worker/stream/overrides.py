"""Overrides in the running worker: every worker reads them all, the one holding a product's state applies them."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import faust

from worker.core import InvalidEvent, Policy, classify
from worker.core.clock import format_timestamp
from worker.core.overrides import InvalidOverride, Override, override_record, parse_override
from worker.core.state import ProductState, redecide
from worker.kafka.security import client_options
from worker.kafka.whole_topic import TopicRecord, WholeTopic
from worker.stream.redecide import Judge, Redecided, Redecider
from worker.stream.runtime import Runtime
from worker.stream.state_store import TableStateStore

log = logging.getLogger("worker.overrides")


class Change(NamedTuple):
    """What one record of the overrides topic did: the product, the override now (None: none), the one before."""

    key: bytes
    override: Override | None
    previous: Override | None


class OverrideBook:
    """Every product's override, as the overrides topic says: the latest record per product id decides.

    A tombstone clears it; so does an invalid document (counted and logged): at
    start and live alike, the same topic gives the same overrides. Expired ones stay
    in the book until ``expire`` takes them out, so the worker can decide their
    products again.
    """

    def __init__(self) -> None:
        self._by_key: dict[bytes, Override] = {}
        self._expiries: list[tuple[float, bytes, str]] = []  # (expires_at_s, key, digest), a heap

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: bytes) -> Override | None:
        return self._by_key.get(key)

    def in_force(self, key: bytes, now: float) -> Override | None:
        override = self._by_key.get(key)
        return override if override is not None and override.in_force(now) else None

    def active(self, now: float) -> int:
        return sum(1 for override in self._by_key.values() if override.in_force(now))

    def keys(self) -> list[bytes]:
        return list(self._by_key)

    def apply(self, record: TopicRecord) -> tuple[Change, str | None]:
        """Take one record in; what changed, and why it was rejected (None: it was not)."""
        key = record.key or b""
        previous = self._by_key.get(key)
        if record.value is None:
            self._by_key.pop(key, None)
            return Change(key, None, previous), None
        try:
            override = parse_override(record.key, record.value)
        except InvalidOverride as exc:
            self._by_key.pop(key, None)
            return Change(key, None, previous), exc.message
        self._by_key[key] = override
        if override.expires_at_s is not None:
            heapq.heappush(self._expiries, (override.expires_at_s, key, override.digest))
        return Change(key, override, previous), None

    def next_expiry(self) -> float | None:
        return self._expiries[0][0] if self._expiries else None

    def expire(self, now: float) -> list[Change]:
        """Take out the overrides whose expiry has come (each still the product's latest): what ended."""
        ended = []
        while self._expiries and self._expiries[0][0] <= now:
            _, key, digest = heapq.heappop(self._expiries)
            override = self._by_key.get(key)
            if override is not None and override.digest == digest:
                del self._by_key[key]
                ended.append(Change(key, None, override))
        return ended


class OverrideKeeper:
    """Follows the overrides topic and applies each change at once to the products whose state is held here.

    Every worker reads the whole topic (no consumer group), so whichever partitioner
    wrote it, the worker holding a product's state sees its override: it looks the
    product up in the state partitions it owns, and only that worker decides it
    again. A flip of block/allow is published (first reason MANUAL_OVERRIDE, or the
    policy's decision again when the override ends); every later event of the
    product is decided under the override while it is in force (the processor reads
    the same book). Expiry: a timer wakes at the next expiry (sooner when a nearer one
    arrives). After a rebalance, the overrides of products now held here are applied
    again (nothing is published where the state says it is applied already).
    """

    def __init__(
        self, app: faust.App, runtime: Runtime, store: TableStateStore, book: OverrideBook, redecider: Redecider,
        state_topic: str, start_offsets: dict[int, int] | None = None,
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.store = store
        self.book = book
        self.redecider = redecider
        self.state_topic = state_topic
        self.start_offsets = start_offsets
        self._woken: asyncio.Event | None = None
        self._reconcile_wanted: asyncio.Event | None = None
        self._ended_at_start: list[Change] = []  # tombstones read before the worker started: cleared while it was off

    def remember_cleared(self, changes: Iterable[Change]) -> None:
        self._ended_at_start.extend(change for change in changes if change.override is None)

    # --- following the topic --------------------------------------------------------------

    async def follow(self) -> None:
        settings = self.runtime.settings
        topic = WholeTopic(settings.bootstrap_servers, settings.overrides_topic, client_options(settings))
        try:
            for record in await topic.start(from_offsets=self.start_offsets):
                await self.on_record(record)
            await topic.follow(self.on_record)
        finally:
            await topic.stop()

    async def on_record(self, record: TopicRecord) -> None:
        change, rejected = self.book.apply(record)
        metrics = self.runtime.metrics
        metrics.overrides_active.set(self.book.active(time.time()))
        if rejected is not None:
            metrics.overrides_rejected.inc()
            log.error(
                "override for %s rejected (%s[%d]@%d): %s; the product has no override",
                change.key.decode(errors="replace"), self.runtime.settings.overrides_topic, record.partition,
                record.offset, rejected, extra={"event": "override_rejected", "reason": rejected},
            )
        if self._woken is not None:
            self._woken.set()  # perhaps a nearer expiry
        await self.apply([change], "set" if change.override is not None else "cleared")

    # --- expiry ------------------------------------------------------------------------------

    async def expire_forever(self) -> None:
        self._woken = asyncio.Event()
        while True:
            now = time.time()
            ended = self.book.expire(now)
            if ended:
                self.runtime.metrics.overrides_active.set(self.book.active(now))
                await self.apply(ended, "expired")
            upcoming = self.book.next_expiry()
            self._woken.clear()
            wait = 3600.0 if upcoming is None else max(0.0, upcoming - time.time())
            try:
                await asyncio.wait_for(self._woken.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass

    # --- applying --------------------------------------------------------------------------

    def request_reconcile(self) -> None:
        if self._reconcile_wanted is None:
            self._reconcile_wanted = asyncio.Event()
        self._reconcile_wanted.set()

    async def reconcile_forever(self) -> None:
        if self._reconcile_wanted is None:
            self._reconcile_wanted = asyncio.Event()
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            await self.reconcile()

    async def reconcile(self) -> None:
        """After a rebalance: the overrides of products held here now, and those cleared while no worker ran."""
        changes = [Change(key, self.book.get(key), None) for key in self.book.keys()]
        changes.extend(self._ended_at_start)
        self._ended_at_start = []
        await self.apply(changes, "reconciled")

    async def apply(self, changes: list[Change], action: str) -> None:
        owned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.state_topic}
        by_partition: dict[int, list[tuple[bytes, bytes, Change]]] = {}
        for change in changes:
            for partition in owned:
                data = self.store.get(change.key, partition)
                if data is not None:
                    by_partition.setdefault(partition, []).append((change.key, data, change))
                    break
        for partition, found in by_partition.items():
            wanted = {key: change for key, _, change in found}
            stored = await self.redecider.chunk(
                partition, [(key, data) for key, data, _ in found], self._judge(wanted, action),
            )
            for key, outcome in stored:
                change = wanted[key]
                log.info(
                    "override %s: product %s decided again, %s", action, key.decode(errors="replace"),
                    "a decision published" if outcome.record is not None else "nothing flipped",
                    extra={
                        "event": "override_applied", "action": action, "product_id": key.decode(errors="replace"),
                        "published": outcome.record is not None,
                        "reference": (change.override or change.previous or _NONE).reference,
                    },
                )
                if outcome.record is not None:
                    self.runtime.metrics.override_decisions.labels(outcome.record["decision"]).inc()

    def _judge(self, changes: dict[bytes, Change], action: str) -> Judge:
        now = time.time()
        decided_at = format_timestamp(now)
        policy = self.runtime.policy
        topic = self.runtime.settings.overrides_topic

        def judge(key: bytes, data: bytes) -> Redecided | None:
            change = changes[key]
            override = self.book.in_force(key, now)  # the book now, not the record: a later one may have come
            state = ProductState.decode(key, data)
            try:
                transition = redecide(state, policy, override, change.previous, now)
            except InvalidEvent as exc:
                log.warning(
                    "product %s kept its decision: the policy cannot decide it without an override (%s: %s)",
                    key.decode(errors="replace"), exc.code, exc.message,
                    extra={"event": "override_undecidable", "code": str(exc.code)},
                )
                return None
            if transition is None or transition.state is None:
                return None
            record = None
            if transition.changed:
                source: dict[str, Any] = {"override": {"topic": topic, "action": action}}
                ended = change.previous if override is None else None
                reference = (override or ended or _NONE).reference
                if reference is not None:
                    source["override"]["reference"] = reference
                record = transition.record(decided_at, source)
                if override is not None:
                    record["override"] = override_record(override, _policy_decision(state, policy, now))
            stored = transition.state if transition.changed else transition.state.in_force(state.decision_id)
            return Redecided(record, stored.encode(), transition.changed)  # unpublished: the decision in force stays

        return judge


class _NoOverride(NamedTuple):
    reference: str | None = None


_NONE = _NoOverride()


def _policy_decision(state: ProductState, policy: Policy, now: float) -> str:
    try:
        return classify(state.facts, policy, now).decision
    except InvalidEvent as exc:
        return f"undecidable ({exc.code})"
