"""The stream buffer bounded in bytes as well as in events, so that a flood of large messages cannot exhaust memory."""

from __future__ import annotations

from typing import Any

import faust
from mode.utils.queues import ThrowableQueue


def message_bytes(item: Any) -> int:
    """What a buffered event holds on to: its raw key and value (anything else counts as nothing)."""
    try:  # once per event on the way in and out: the cheapest form
        message = item.message
        return len(message.value or b"") + len(message.key or b"")
    except (AttributeError, TypeError):
        return 0


class ByteBoundedQueue(ThrowableQueue):
    """Faust's stream buffer, also under pressure when the bytes it holds pass ``max_bytes`` / 1.25.

    Faust counts events only: 20,000 small events are ~9 MB, but 20,000 messages of 1 MB would be 20 GB.
    Under pressure Faust stops fetching the partition that put the event (Consumer.on_buffer_full) and resumes it
    once the buffer has drained to 40% (in events, and here in bytes too), so what is held stays near the bound
    plus one fetch.
    """

    def __init__(self, *args: Any, max_bytes: int, **kwargs: Any) -> None:
        self.bytes = 0
        self.bytes_high = int(max_bytes / self.pressure_high_ratio)
        self.bytes_drop = int(max_bytes * self.pressure_drop_ratio)
        super().__init__(*args, **kwargs)

    def _put(self, item: Any) -> None:
        self.bytes += message_bytes(item)
        super()._put(item)  # type: ignore[misc]

    def _get(self) -> Any:
        item = super()._get()  # type: ignore[misc]
        self.bytes -= message_bytes(item)
        return item

    def clear(self) -> None:
        super().clear()
        self.bytes = 0

    def in_pressure_high_state(self, callback: Any) -> bool:
        pending = self._pending_pressure_drop_callbacks
        if callback not in pending and (self.qsize() >= self.pressure_high_size or self.bytes >= self.bytes_high):
            pending.add(callback)
            self.on_pressure_high()
            return True
        return False

    def maybe_endorse_pressure_drop(self) -> None:
        # As upstream (one paused partition resumed per get below the drop mark, all when empty), and the bytes
        # must be below their drop mark too.
        pending = self._pending_pressure_drop_callbacks
        if not pending:
            return
        if self.qsize():
            if self.qsize() <= self.pressure_drop_size and self.bytes <= self.bytes_drop:
                pending.pop()()
                self.on_pressure_drop()
        else:
            for callback in pending:
                callback()
            pending.clear()
            self.on_pressure_drop()


def use_byte_bounded_buffers(app: faust.App, max_bytes: int) -> None:
    """Every channel and stream buffer the app creates from now on is a ByteBoundedQueue."""

    def flow_control_queue(maxsize: int | None = None, *, clear_on_resume: bool = False) -> ThrowableQueue:
        return ByteBoundedQueue(
            maxsize=maxsize, flow_control=app.flow_control, clear_on_resume=clear_on_resume, max_bytes=max_bytes
        )

    app.FlowControlQueue = flow_control_queue  # type: ignore[method-assign]
