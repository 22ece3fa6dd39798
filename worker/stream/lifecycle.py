"""Policy lifecycle in the running worker: live policy updates, and re-screening the products it knows."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any, cast

import faust
import orjson

from worker.core import InvalidEvent
from worker.core.clock import format_timestamp
from worker.core.state import ProductState, rescreen
from worker.kafka.consumer import Consumer
from worker.kafka.security import client_options
from worker.kafka.transactions import Transactions
from worker.stream.policy_source import PolicyRecord, PolicySource, judge
from worker.stream.runtime import Runtime
from worker.stream.state_store import TableStateStore

log = logging.getLogger("worker.policy")

RESCREEN_CHUNK = 500


class PolicyLifecycle:
    """Follows the policy topic, swaps the policy in force, and re-screens what this worker knows."""

    def __init__(
        self, app: faust.App, runtime: Runtime, store: TableStateStore, decisions_topic: str, input_topic: str,
        policy_offsets: dict[int, int] | None = None,
    ) -> None:
        self.app = app
        self.policy_offsets = policy_offsets
        self.runtime = runtime
        self.store = store
        self.decisions_topic = decisions_topic
        self.input_topic = input_topic
        self.transactions = Transactions(app, input_topic)
        self._rescreen_wanted: asyncio.Event | None = None

    # --- policy updates ---------------------------------------------------------------

    async def follow_policies(self) -> None:
        """Judge every document published after the ones read at start (or all of them, when none were)."""
        settings = self.runtime.settings
        source = PolicySource(settings.bootstrap_servers, settings.policy_topic, client_options(settings))
        try:
            for record in await source.start(from_offsets=self.policy_offsets):
                await self.on_policy_record(record)
            await source.follow(self.on_policy_record)
        finally:
            await source.stop()

    async def on_policy_record(self, record: PolicyRecord) -> None:
        metrics = self.runtime.metrics
        current = self.runtime.policy
        where = f"{self.runtime.settings.policy_topic}[{record.partition}]@{record.offset}"
        verdict = judge(current, record)
        if verdict.rejection is not None:
            metrics.policy_rejected.labels(reason=verdict.rejection).inc()
            detail = record.error if verdict.rejection == "invalid" else (
                f"reuses version {current.version} with different content"
            )
            log.error(
                "policy rejected, %s stays in force: %s: %s", current.version, where, detail,
                extra={"event": "policy_rejected", "reason": verdict.rejection, "source": where},
            )
            return
        if not verdict.changed:
            return
        new = verdict.policy
        self.runtime.processor.policy = new
        metrics.set_policy(new.version, new.digest, time.time())
        log.info(
            "policy %s in force (was %s), from %s", new.version, current.version, where,
            extra={"event": "policy_changed", "policy_version": new.version, "previous": current.version},
        )
        self.request_rescreen()

    # --- re-screening -----------------------------------------------------------------

    def request_rescreen(self) -> None:
        if self._rescreen_wanted is None:
            self._rescreen_wanted = asyncio.Event()
        self._rescreen_wanted.set()

    async def rescreen_forever(self) -> None:
        if self._rescreen_wanted is None:
            self._rescreen_wanted = asyncio.Event()
        while True:
            await self._rescreen_wanted.wait()
            self._rescreen_wanted.clear()
            await self.rescreen_pass()

    def _active_partitions(self) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.input_topic}

    def _due(self, keys: list[bytes], version: str, active: set[int]) -> Iterator[tuple[bytes, bytes, ProductState]]:
        for key in keys:
            data = self.store.get(key)
            if data is None:
                continue
            state = ProductState.decode(data)
            if state.partition in active and state.policy_version != version:
                yield key, data, state

    async def rescreen_pass(self) -> None:
        """Decide every known product of this worker's partitions again under the policy in force.

        Publishes a decision (reason POLICY_CHANGE) only where block/allow flips,
        stores the new policy version for every product so none is re-screened
        twice for one version, and yields to live traffic between chunks.
        """
        policy = self.runtime.policy
        metrics = self.runtime.metrics
        active = self._active_partitions()
        keys = self.store.keys()
        pending = 0
        for start in range(0, len(keys), RESCREEN_CHUNK):
            pending += sum(1 for _ in self._due(keys[start:start + RESCREEN_CHUNK], policy.version, active))
            await asyncio.sleep(0)  # counting a large store must not hold up live events either
        if not pending:
            return
        started = time.monotonic()
        metrics.rescreen_pending.set(pending)
        log.info(
            "re-screening %d products under policy %s", pending, policy.version,
            extra={"event": "rescreen_started", "products": pending, "policy_version": policy.version},
        )
        changed = unchanged = 0
        for start in range(0, len(keys), RESCREEN_CHUNK):
            if self.runtime.policy is not policy:
                self.request_rescreen()  # a newer policy arrived: start over under it
                break
            chunk_changed, chunk_unchanged = await self._rescreen_chunk(keys[start:start + RESCREEN_CHUNK], policy, active)
            changed += chunk_changed
            unchanged += chunk_unchanged
            metrics.rescreen_pending.set(max(0, pending - changed - unchanged))
            await asyncio.sleep(0)  # live events go first
        seconds = time.monotonic() - started
        metrics.rescreen_pending.set(0)
        metrics.rescreen_duration.set(seconds)
        log.info(
            "re-screened %d products under policy %s in %.2fs: %d decisions changed and published, %d unchanged",
            changed + unchanged, policy.version, seconds, changed, unchanged,
            extra={
                "event": "rescreen_finished", "policy_version": policy.version, "changed": changed,
                "unchanged": unchanged, "seconds": round(seconds, 3),
            },
        )

    async def _rescreen_chunk(self, keys: list[bytes], policy: Any, active: set[int]) -> tuple[int, int]:
        """Re-screen one chunk; counted (compliance_rescreened_products_total) once its output is acknowledged, and
        under exactly_once once it is committed, so a reader who sees the count sees the decisions too."""
        if not self.app.in_transaction:
            changed, unchanged, _ = await self._rescreen_chunk_sends(keys, policy, active, None)
            self._count_rescreened(changed, unchanged)
            return changed, unchanged
        # Under exactly_once the chunk's decisions and state changes go into the transactions of their
        # partitions and are committed before live batches go on (they wait at the gate meanwhile).
        consumer = cast(Consumer, self.app.consumer)
        async with consumer.gate.exclusive():
            try:
                changed, unchanged, partitions = await self._rescreen_chunk_sends(keys, policy, active, self.transactions)
                await consumer.commit_transactions(self.transactions.transactional_id(p) for p in partitions)
            except BaseException as exc:
                consumer.gate.fail(exc)  # half a chunk is in the open transactions: they must never commit
                raise
        self._count_rescreened(changed, unchanged)
        return changed, unchanged

    def _count_rescreened(self, changed: int, unchanged: int) -> None:
        self.runtime.metrics.rescreened.labels("changed").inc(changed)
        self.runtime.metrics.rescreened.labels("unchanged").inc(unchanged)

    async def _rescreen_chunk_sends(
        self, keys: list[bytes], policy: Any, active: set[int], transactions: Transactions | None,
    ) -> tuple[int, int, set[int]]:
        now = time.time()
        decided_at = format_timestamp(now)
        writes = []
        deliveries = []
        for key, data, state in self._due(keys, policy.version, active):
            try:
                transition = rescreen(state, policy, now)
            except InvalidEvent as exc:
                # The stored facts cannot be decided under the new policy (e.g. no exchange rate for the
                # product's currency): keep the decision in force, say so, and do not retry this version.
                log.warning(
                    "product %s kept its decision under policy %s: %s: %s", key.decode(errors="replace"),
                    policy.version, exc.code, exc.message,
                    extra={"event": "rescreen_undecidable", "code": str(exc.code)},
                )
                writes.append((key, data, state._replace(policy_version=policy.version).encode(), state.partition, False))
                continue
            if transition is None or transition.state is None:
                continue
            if transition.changed:
                record = transition.record(decided_at, {
                    "rescreen": {"from_policy_version": state.policy_version, "to_policy_version": policy.version},
                })
                value = orjson.dumps(record)
                deliveries.append(await (
                    transactions.send(state.partition, self.decisions_topic, key, value) if transactions is not None
                    else self.app.producer.send(self.decisions_topic, key, value, None, None, None)
                ))
            writes.append((key, data, transition.state.encode(), state.partition, transition.changed))
        # Decisions are acknowledged before the state says "re-screened": a crash in between re-screens again.
        await asyncio.gather(*deliveries)
        changed = unchanged = 0
        changelog = []
        partitions = {partition for _, _, _, partition, _ in writes}
        for key, old, new, partition, did_change in writes:
            if self.store.get(key) != old:
                continue  # a live event decided this product meanwhile, under the same policy
            changelog.append(self.store.write(key, new, partition))
            if did_change:
                changed += 1
            else:
                unchanged += 1
        # Its own changelog records, not the live batch's: those are sent and awaited with their batch.
        send = transactions.send_to_own_partition if transactions is not None else self.app.producer.send
        await asyncio.gather(*await self.store.send(changelog, send))
        return changed, unchanged, partitions
