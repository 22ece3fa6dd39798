"""The exactly-once commit gate: commits only between batches, batches wait for a commit, nothing commits after a failure."""

from __future__ import annotations

import asyncio

import pytest

from worker.kafka.transactions import TransactionAborted, TransactionGate


async def committed_while(gate: TransactionGate, log: list[str]) -> None:
    async with gate.exclusive():
        log.append("commit")


def test_a_commit_waits_until_every_batch_in_flight_is_done() -> None:
    async def scenario() -> list[str]:
        gate, log = TransactionGate(), []
        await gate.enter()
        await gate.enter()  # two pipelined batches
        commit = asyncio.ensure_future(committed_while(gate, log))
        await asyncio.sleep(0.01)
        log.append("first acked")
        gate.leave()
        await asyncio.sleep(0.01)
        log.append("second acked")
        gate.leave()
        await commit
        return log

    assert asyncio.run(scenario()) == ["first acked", "second acked", "commit"]


def test_a_new_batch_waits_for_a_waiting_commit() -> None:
    async def scenario() -> list[str]:
        gate, log = TransactionGate(), []
        await gate.enter()
        commit = asyncio.ensure_future(committed_while(gate, log))
        await asyncio.sleep(0.01)

        async def next_batch() -> None:
            await gate.enter()
            log.append("next batch")
            gate.leave()

        batch = asyncio.ensure_future(next_batch())
        await asyncio.sleep(0.01)
        assert log == [], "neither the commit nor the next batch may run while a batch is in flight"
        gate.leave()
        await asyncio.gather(commit, batch)
        return log

    assert asyncio.run(scenario()) == ["commit", "next batch"]


def test_after_a_failed_batch_nothing_is_committed() -> None:
    async def scenario() -> None:
        gate, log = TransactionGate(), []
        await gate.enter()
        gate.fail(RuntimeError("delivery failed"))
        gate.leave()
        with pytest.raises(TransactionAborted, match="delivery failed"):
            await committed_while(gate, log)
        assert log == []

    asyncio.run(scenario())
