"""The stream buffer counts bytes as well as events: large messages pause fetching long before 20,000 of them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from mode.utils.queues import FlowControlEvent

from worker.kafka.buffer import ByteBoundedQueue, message_bytes


def event(size: int, key: bytes | None = b"k") -> SimpleNamespace:
    return SimpleNamespace(message=SimpleNamespace(key=key, value=b"v" * size))


def test_message_bytes_counts_raw_key_and_value_only() -> None:
    assert message_bytes(event(10)) == 11
    assert message_bytes(event(10, key=None)) == 10
    assert message_bytes(SimpleNamespace(message=SimpleNamespace(key=None, value=None))) == 0
    assert message_bytes(object()) == 0


def test_pressure_by_bytes_pauses_then_resumes_below_the_drop_mark() -> None:
    async def run() -> None:
        calls: list[str] = []
        queue = ByteBoundedQueue(maxsize=20_000, flow_control=FlowControlEvent(), max_bytes=1_000)
        assert (queue.bytes_high, queue.bytes_drop) == (800, 400)

        def put(size: int, tp: str) -> bool:
            return queue.put_nowait_enhanced(
                event(size, key=None), on_pressure_high=lambda: calls.append(f"high {tp}"),
                on_pressure_drop=lambda: calls.append(f"drop {tp}"),
            )

        assert not put(500, "a") and not put(299, "a")  # 799 bytes: below the mark, however few events
        assert put(100, "a") is False  # the mark is checked before the put: 799 < 800
        assert put(100, "b") is True and queue.bytes == 999  # 899 >= 800: partition b pauses, its event still kept
        assert calls == ["high b"]
        assert (await queue.get()).message.value == b"v" * 500  # 499 bytes left, above the drop mark
        assert calls == ["high b"]
        queue.get_nowait()  # 200 bytes left: below both drop marks, which the next get sees (it looks first)
        assert calls == ["high b"]
        queue.get_nowait()
        assert calls == ["high b", "drop b"] and queue.bytes == 100
        queue.clear()
        assert queue.bytes == 0 and queue.empty()

    asyncio.run(run())


def test_pressure_by_count_still_applies_to_small_events() -> None:
    async def run() -> None:
        queue = ByteBoundedQueue(maxsize=10, flow_control=FlowControlEvent(), max_bytes=1 << 30)
        high = [queue.put_nowait_enhanced(event(1), on_pressure_high=lambda: None, on_pressure_drop=lambda: None)
                for _ in range(10)]
        assert high.index(True) == 8  # 10 / 1.25 events, as Faust's own queue

    asyncio.run(run())
