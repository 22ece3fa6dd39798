"""The consumer's drain-loop fast path keeps Faust's semantics: a rebalance still abandons a stuck callback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from worker.app import create_app
from worker.core import load_bundled_policy
from worker.faust_ext import Consumer
from worker.settings import Settings


@pytest.fixture
def consumer() -> Iterator[Consumer]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = create_app(Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}), load_bundled_policy())
        consumer = app.consumer
        assert isinstance(consumer, Consumer), "the app must be built with the extended consumer"
        yield consumer
        consumer._thread.thread_loop.close()  # the consumer thread's own loop, created with the consumer
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def run(consumer: Consumer, coroutine: object) -> object:
    return consumer.loop.run_until_complete(coroutine)  # type: ignore[arg-type]


def test_callback_that_finishes_inline_creates_no_task(consumer: Consumer) -> None:
    calls = []

    async def callback() -> str:
        calls.append("ran")
        return "delivered"

    async def drain_one() -> tuple[object, int]:
        before = len(asyncio.all_tasks())
        result = await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        return result, len(asyncio.all_tasks()) - before

    result, new_tasks = run(consumer, drain_one())
    assert calls == ["ran"]
    assert new_tasks == 0
    assert result.results == ["delivered"] and result.stopped is False


def test_rebalance_abandons_a_callback_stuck_on_a_full_buffer(consumer: Consumer) -> None:
    buffer_has_room = asyncio.Event()
    progress = []

    async def callback() -> None:
        progress.append("started")
        await buffer_has_room.wait()  # a full stream buffer: the callback must yield
        progress.append("finished")

    async def drain_one_during_rebalance() -> object:
        waiting = asyncio.ensure_future(consumer.wait_first(callback(), consumer.suspend_flow.wait()))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert progress == ["started"] and not waiting.done()
        consumer.suspend_flow.set()  # what Faust does when a rebalance starts
        return await asyncio.wait_for(waiting, 5)

    result = run(consumer, drain_one_during_rebalance())
    assert progress == ["started"], "the abandoned callback must not run on"
    assert result.results == [True], "the winner is the suspend-flow wait, as in Faust"


def test_callback_that_yields_and_then_finishes_returns_its_result(consumer: Consumer) -> None:
    async def callback() -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        return "late"

    result = run(consumer, consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    assert result.results == ["late"]


def test_callback_errors_propagate_and_leave_no_dangling_coroutine(consumer: Consumer) -> None:
    async def inline_failure() -> None:
        raise ValueError("boom")

    async def later_failure() -> None:
        await asyncio.sleep(0)
        raise KeyError("bang")

    with pytest.raises(ValueError, match="boom"):
        run(consumer, consumer.wait_first(inline_failure(), consumer.suspend_flow.wait()))
    with pytest.raises(KeyError, match="bang"):
        run(consumer, consumer.wait_first(later_failure(), consumer.suspend_flow.wait()))


def test_suspended_flow_takes_fausts_own_path(consumer: Consumer) -> None:
    consumer.suspend_flow.set()
    progress = []

    async def callback() -> None:
        progress.append("ran")
        await asyncio.sleep(1)

    result = run(consumer, consumer.wait_first(callback(), consumer.suspend_flow.wait()))
    assert result.results == [True]
