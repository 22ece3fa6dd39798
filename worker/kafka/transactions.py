"""Exactly-once output: sends that join the input partition's transaction, and the gate that keeps commits between batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import faust
from faust.transport.consumer import TopicPartitionGroup
from faust.types import RecordMetadata


class TransactionAborted(RuntimeError):
    """Output of a batch failed under exactly_once: nothing may be committed any more in this process."""


class TransactionGate:
    """Under exactly_once, a commit happens only between batches, never while a batch is half done.

    Faust commits a partition's transaction (its output records plus its input
    offsets, ``send_offsets_to_transaction``) with the offsets acked so far. A
    batch whose output is already in the transaction but whose events are not yet
    acked would be committed without its offsets and decided again after a crash:
    a duplicate for read_committed consumers. So each batch holds the gate from
    its first send until its events are acked (``enter``/``leave``; batches still
    overlap each other, keeping the pipelining), and a commit (``exclusive``) waits
    until no batch is in flight while new ones wait for it. Once output failed
    (``fail``), every later commit raises: the open transactions are never
    committed and the broker aborts them when the restarted worker's producers
    take over their transactional ids.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.failed: BaseException | None = None

    async def enter(self) -> None:
        async with self._lock:  # waits while a commit holds the gate
            self._in_flight += 1
            self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()

    def fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._lock:
            await self._idle.wait()
            if self.failed is not None:
                raise TransactionAborted(f"output failed earlier, not committing: {self.failed!r}") from self.failed
            yield


class Transactions:
    """Exactly-once sends: output joins the transaction of the input partition it comes from.

    Faust commits the offsets of input partition ``p`` in the transaction of
    ``{app id}-{topic group}-{p}`` (one transactional producer per assigned
    partition, ``TransactionManager.commit``). Its own ``TransactionManager.send``
    picks the transaction by the *destination* partition and that topic's group,
    which is the same only by luck (and the decisions topic has no group), so
    these sends name the source partition's transaction themselves. A send for a
    partition this worker does not own fails (no such producer); it never falls
    back to a non-transactional send.
    """

    def __init__(self, app: faust.App, input_topic: str) -> None:
        self.app = app
        self.input_topic = input_topic
        self._ids: dict[int, str] = {}

    def transactional_id(self, partition: int) -> str:
        transactional_id = self._ids.get(partition)
        if transactional_id is None:
            app = self.app
            group = TopicPartitionGroup(self.input_topic, partition, app.assignor.group_for_topic(self.input_topic))
            transactional_id = self._ids[partition] = app.consumer.transactions.transactional_id_format.format(
                tpg=group, group_id=app.conf.id
            )
        return transactional_id

    async def send(
        self, source_partition: int, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None,
        headers: list[tuple[str, bytes | None]] | None = None,
    ) -> Awaitable[RecordMetadata]:
        return await self.app.producer.send(
            topic, key, value, partition, None, headers, transactional_id=self.transactional_id(source_partition)
        )

    async def send_to_own_partition(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int, timestamp: Any, headers: Any
    ) -> Awaitable[RecordMetadata]:
        """Faust's send signature, for changelog records: they go to the partition of the input they came from."""
        return await self.send(partition, topic, key, value, partition)
