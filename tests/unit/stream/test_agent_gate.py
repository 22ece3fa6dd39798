"""Under exactly_once, a batch that waited at the commit gate through a rebalance's revoke is dropped, not sent."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from types import SimpleNamespace

import faust
import pytest
from faust.types import EventT

from tests.unit.kafka.test_batches import PARTITION, TOPIC, event, worker_app
from worker.stream.agent import Sent, _batch_agent


@pytest.fixture
def app() -> Iterator[faust.App]:
    with worker_app(PROCESSING_GUARANTEE="exactly_once") as app:
        yield app


def run_through_gate(app: faust.App, rebalance: str | None) -> tuple[list[list[int]], list[EventT]]:
    """Queue a batch while a commit holds the gate; meanwhile ``rebalance`` (or nothing) happens; then open it.

    What the agent handed to ``handle`` (offsets per batch), and the events queued.
    """
    assert app.in_transaction, "the gate is exactly_once's"
    consumer = app.consumer
    gate = consumer.gate
    handled: list[list[int]] = []

    async def handle(events: Sequence[EventT]) -> Sent:
        handled.append([queued.message.offset for queued in events])
        return Sent([], [], [], [])

    topic = app.topic(TOPIC)
    runtime = SimpleNamespace(store=None, metrics=None)
    agent = _batch_agent(app, runtime, topic, "gate-probe", 100, handle, None, state=False)  # type: ignore[arg-type]
    stream = app.stream(topic)
    events = [event(app, offset, generation_id=7) for offset in range(100, 105)]

    async def scenario() -> None:
        queue = aiter(stream.channel).queue
        running = asyncio.ensure_future(agent.fun(stream))
        try:
            async with gate.exclusive():  # the revoke's commit (Consumer.on_partitions_revoked) holds the gate
                for queued in events:
                    queue.put_nowait(queued)
                for _ in range(100):  # until the agent has taken the batch and waits at the gate
                    await asyncio.sleep(0)
                    if queue.empty() and gate._lock._waiters:
                        break
                assert queue.empty() and gate._lock._waiters, "the batch must be waiting at the gate"
                if rebalance == "revoked":  # Faust's revoke handler, after the commit: the flow stops
                    consumer.stop_flow()
                    app.flow_control.suspend()
                elif rebalance == "assigned":  # and a new generation's assignment came too
                    app.consumer_generation_id = 8
            async with asyncio.timeout(5):
                while gate._in_flight or (not handled and rebalance is None):
                    await asyncio.sleep(0.01)
            for _ in range(20):
                await asyncio.sleep(0)
        finally:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

    app.loop.run_until_complete(scenario())
    return handled, events


def test_a_batch_that_waited_at_the_gate_without_a_rebalance_is_processed_and_acked(app: faust.App) -> None:
    handled, _ = run_through_gate(app, None)
    assert handled == [[100, 101, 102, 103, 104]]
    assert app.consumer._new_offset(PARTITION) == 105


@pytest.mark.parametrize("rebalance", ["revoked", "assigned"], ids=["flow-stopped-by-revoke", "new-generation"])
def test_a_batch_that_waited_at_the_gate_through_a_rebalance_is_dropped_unacked(app: faust.App, rebalance: str) -> None:
    consumer = app.consumer
    handled, events = run_through_gate(app, rebalance)
    assert handled == [], "nothing of a stale batch may be sent into the transactions"
    assert not consumer._acked[PARTITION], "nor counted as processed: it is fetched again from the committed offset"
    assert not any(queued.message in consumer._unacked_messages for queued in events), (
        "the revoke's wait for unacked events must not wait for them"
    )
    assert consumer.gate._in_flight == 0
