"""Deciding known products again outside the live stream (re-screening, overrides): publish flips, store the rest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import faust
import orjson

from worker.kafka.consumer import Consumer
from worker.kafka.transactions import Transactions
from worker.stream.state_store import TableStateStore, changelog_offsets


class Redecided(NamedTuple):
    """A known product decided again: the decision to publish (None: nothing flipped) and its state to store."""

    record: dict[str, Any] | None
    state: bytes
    changed: bool  # block/allow flipped


# (product key, its stored state) -> what to publish and store, or None to leave it as it is
Judge = Callable[[bytes, bytes], Redecided | None]


class Redecider:
    """Decides a chunk of one partition's known products again, publishes the flips, then stores every new state.

    Decisions are acknowledged before the state says "decided again" (a crash in between
    decides again). Under exactly_once the chunk's decisions and state changes go into the
    transaction of its partition and are committed before live batches go on (they wait at
    the gate meanwhile). A product a live event decided meanwhile is left to that decision.
    """

    def __init__(self, app: faust.App, store: TableStateStore, decisions_topic: str, state_topic: str) -> None:
        self.app = app
        self.store = store
        self.decisions_topic = decisions_topic
        self.transactions = Transactions(app, state_topic)

    async def chunk(
        self, partition: int, items: Sequence[tuple[bytes, bytes]], judge: Judge,
    ) -> list[tuple[bytes, Redecided]]:
        """What was stored, once it is durable (acknowledged, or committed under exactly_once)."""
        if not self.app.in_transaction:
            stored, writes, sent = await self._send(partition, items, judge, None)
            self.store.durable(writes, changelog_offsets(sent))
            return stored
        consumer = cast(Consumer, self.app.consumer)
        async with consumer.gate.exclusive():
            try:
                stored, writes, sent = await self._send(partition, items, judge, self.transactions)
                await consumer.commit_transactions([self.transactions.transactional_id(partition)])
            except BaseException as exc:
                consumer.gate.fail(exc)  # half a chunk is in the open transaction: it must never commit
                raise
        self.store.durable(writes, changelog_offsets(sent))
        return stored

    async def _send(
        self, partition: int, items: Sequence[tuple[bytes, bytes]], judge: Judge, transactions: Transactions | None,
    ) -> tuple[list[tuple[bytes, Redecided]], list[Any], list[tuple[int, Any, int]]]:
        decided = []
        deliveries = []
        for key, data in items:
            outcome = judge(key, data)
            if outcome is None:
                continue
            if outcome.record is not None:
                value = orjson.dumps(outcome.record)
                deliveries.append(await (
                    transactions.send(partition, self.decisions_topic, key, value) if transactions is not None
                    else self.app.producer.send(self.decisions_topic, key, value, None, None, None)
                ))
            decided.append((key, data, outcome))
        await asyncio.gather(*deliveries)
        stored = []
        writes = []
        for key, old, outcome in decided:
            if self.store.get(key, partition) != old:
                continue  # a live event decided this product meanwhile
            writes.append(self.store.stage_write(key, outcome.state, partition))
            stored.append((key, outcome))
        # Its own changelog records, not the live batch's: those are sent and awaited with their batch.
        send = transactions.send_to_own_partition if transactions is not None else self.app.producer.send
        try:
            sent_deliveries = await self.store.send(writes, send)
            await asyncio.gather(*sent_deliveries)
        except BaseException:
            self.store.discard(writes)
            raise
        sent = [(write[0], delivery, 1) for write, delivery in zip(writes, sent_deliveries)]
        return stored, writes, sent
