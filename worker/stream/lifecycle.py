"""Policy lifecycle in the running worker: live policy updates, and re-screening the products it knows."""

from __future__ import annotations

import asyncio
import logging
import time

import faust

from worker.core import InvalidEvent, Policy
from worker.core.clock import format_timestamp
from worker.core.overrides import override_record
from worker.core.state import ProductState, rescreen, stored_policy_version, with_override
from worker.kafka.security import client_options
from worker.stream.policy_source import PolicyRecord, PolicySource, judge
from worker.stream.redecide import Judge, Redecided, Redecider
from worker.stream.runtime import Runtime
from worker.stream.state_store import TableStateStore

log = logging.getLogger("worker.policy")


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
        self.redecider = Redecider(app, store, decisions_topic, input_topic)
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

    async def rescreen_pass(self) -> None:
        """Decide every known product of this worker's partitions again under the policy in force.

        Publishes a decision (reason POLICY_CHANGE) only where block/allow flips,
        stores the new policy version for every product so none is re-screened
        twice for one version, and yields to live traffic between chunks. Each
        partition's stored states are read a chunk at a time, never all at once.
        """
        policy = self.runtime.policy
        metrics = self.runtime.metrics
        partitions = sorted(self._active_partitions())
        pending = 0
        for partition in partitions:
            for chunk in self.store.scan(partition):
                pending += sum(1 for _, data in chunk if stored_policy_version(data) != policy.version)
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
        for partition in partitions:
            for chunk in self.store.scan(partition):
                if self.runtime.policy is not policy:
                    self.request_rescreen()  # a newer policy arrived: start over under it
                    return
                if partition not in self._active_partitions():
                    break  # revoked meanwhile: its new owner re-screens it
                chunk_changed, chunk_unchanged = await self._rescreen_chunk(partition, chunk, policy)
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

    async def _rescreen_chunk(self, partition: int, chunk: list[tuple[bytes, bytes]], policy: Policy) -> tuple[int, int]:
        """Re-screen one chunk; counted (compliance_rescreened_products_total) once its output is acknowledged, and
        under exactly_once once it is committed, so a reader who sees the count sees the decisions too."""
        stored = await self.redecider.chunk(partition, chunk, self._rescreen_judge(policy))
        changed = sum(1 for _, outcome in stored if outcome.changed)
        unchanged = len(stored) - changed
        self.runtime.metrics.rescreened.labels("changed").inc(changed)
        self.runtime.metrics.rescreened.labels("unchanged").inc(unchanged)
        return changed, unchanged

    def _rescreen_judge(self, policy: Policy) -> Judge:
        now = time.time()
        decided_at = format_timestamp(now)
        overrides = self.runtime.overrides

        def judge(key: bytes, data: bytes) -> Redecided | None:
            if stored_policy_version(data) == policy.version:
                return None
            state = ProductState.decode(key, data)
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
                kept = state._replace(policy_version=policy.version).in_force(state.decision_id)
                return Redecided(None, kept.encode(), False)
            if transition is None or transition.state is None:
                return None
            override = overrides.in_force(key, now)
            if override is not None:  # staff decided this product: a new policy does not change that
                transition = with_override(transition, override)
            record = None
            if transition.changed:
                record = transition.record(decided_at, {
                    "rescreen": {"from_policy_version": state.policy_version, "to_policy_version": policy.version},
                })
                if override is not None:
                    record["override"] = override_record(override, transition.decision.decision)
            stored = transition.state if transition.changed else transition.state.in_force(state.decision_id)
            return Redecided(record, stored.encode(), transition.changed)  # unpublished: the decision in force stays

        return judge
