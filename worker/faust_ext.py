"""Small, documented extensions of Faust's consumer for the hot path, installed through the app's transport."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

# Faust's consumer uses asyncio.Event for suspend_flow: its wait() coroutine marks the drain loop's call.
_EVENT_WAIT_CODE = asyncio.Event.wait.__code__


class _Resume:
    """Await the rest of a coroutine whose first step already ran and yielded ``pending``.

    Equivalent to ``yield from coro`` picked up after its first step: values and
    exceptions (cancellation included) travel to and from the coroutine unchanged.
    """

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - forwarded into the coroutine, as yield from does
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, minus four asyncio tasks per message when flow is not suspended.

    Faust's drain loop hands every message over with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())``, which
    wraps both coroutines, plus the service's stopped and crashed events, in tasks
    and races them, so that a rebalance (``suspend_flow`` set) can abandon a
    callback stuck on a full or suspended stream buffer. That costs four tasks and
    an ``asyncio.wait`` per message.

    Here the callback's first step runs inline. If it finishes without ever
    yielding to the event loop, nothing else can have run meanwhile, so no
    rebalance can have started, and the race is skipped. If it yields (a full
    buffer, suspended flow control), the rest of it races ``suspend_flow`` exactly
    as in Faust. Every other ``wait_first`` call is Faust's own.
    """

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        if (
            len(coros) == 2
            and timeout is None
            and getattr(coros[1], "cr_code", None) is _EVENT_WAIT_CODE
            and isinstance(coros[0], Coroutine)
            and not (self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set())
        ):
            callback, suspended = coros
            try:
                pending = callback.send(None)
            except StopIteration as done:
                suspended.close()
                return WaitResults([callback], [done.value], False)
            except BaseException:
                suspended.close()
                raise
            return await super().wait_first(_Resume(callback, pending), suspended)
        return await super().wait_first(*coros, timeout=timeout)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with the consumer above."""

    Consumer = Consumer
