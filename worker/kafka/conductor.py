"""Faust's conductor with a lean hand-over of raw-bytes records: the events Faust would make, with less work per record."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableSet
from typing import Any

from faust.transport import conductor as faust_conductor
from faust.types import TP, Message

from worker.kafka.schema import RawSchema

Handler = Callable[[Message], Awaitable[None]]


class ConductorCompiler(faust_conductor.ConductorCompiler):
    """Faust's per-partition handler; for a partition read by one channel of ``RawSchema``, a leaner one.

    Faust's handler, for every record, awaits the flow control and the producer
    buffer's ebb (two coroutines, and a settings lookup in the buffer's size),
    decodes through the channel's schema (which for ``RawSchema`` returns the
    record's key and value as they are), builds the event through
    ``app.create_event`` (another settings lookup), and keeps sets of the channels
    it delivered to. The handler built here makes the same event (``app.conf.Event``
    with the record's key, value and headers) and puts it into the same queue with
    the same pressure callbacks, and awaits the flow control or the producer's
    buffer only when they would make it wait. Anything else (several channels,
    another schema) gets Faust's own handler.
    """

    def build(self, conductor: Any, tp: TP, channels: MutableSet[Any]) -> Handler:
        return self.lean(conductor, tp, channels) or super().build(conductor, tp, channels)

    def lean(self, conductor: Any, tp: TP, channels: MutableSet[Any]) -> Handler | None:
        """The lean handler, or None where Faust's own must do (several channels, another schema)."""
        if len(channels) != 1:
            return None
        channel = next(iter(channels))
        if not isinstance(getattr(channel, "schema", None), RawSchema):
            return None
        app = conductor.app
        consumer_on_buffer_full = app.consumer.on_buffer_full
        consumer_on_buffer_drop = app.consumer.on_buffer_drop
        on_topic_buffer_full = app.sensors.on_topic_buffer_full
        flow_control = app.flow_control
        flow_active, acquire_flow_control = flow_control.is_active, flow_control.acquire
        producer_buffer = app.producer.buffer
        wait_until_producer_ebb = producer_buffer.wait_until_ebb
        pending = producer_buffer.pending
        # What ProducerBuffer.size reads: its own queue, unless the producer runs in a thread of its own.
        ebb_may_wait = (lambda: True) if app.conf.producer_threaded else (lambda: pending.qsize() > producer_buffer.max_messages)
        event_type = app.conf.Event

        def on_pressure_high() -> None:
            on_topic_buffer_full(tp)
            consumer_on_buffer_full(tp)

        def on_pressure_drop() -> None:
            consumer_on_buffer_drop(tp)

        async def on_message(message: Message) -> None:
            if not flow_active():
                await acquire_flow_control()
            if ebb_may_wait():
                await wait_until_producer_ebb()
            message.incref(1)
            event = event_type(app, message.key, message.value, message.headers, message)
            queue = channel.queue
            if queue.full():
                on_topic_buffer_full(tp)
                await channel.put(event)
            else:
                queue.put_nowait_enhanced(event, on_pressure_high=on_pressure_high, on_pressure_drop=on_pressure_drop)

        return on_message


class Conductor(faust_conductor.Conductor):
    """Faust's conductor with the compiler above, and no lock taken per record while no one holds it.

    Faust's ``on_message`` acquires ``_tp_to_callback_lock`` around every lookup of
    a record's handler, so that a resubscription rewriting the handlers is never
    read half-done. Only such a rewrite holds the lock, across its whole update;
    on one event loop, a record handled while the lock is free cannot meet one in
    progress, so the lock is awaited only while it is held.
    """

    _compiler: ConductorCompiler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._compiler = ConductorCompiler()

    def _build_handler(self, tp: TP, channels: MutableSet[Any]) -> Handler:
        # Faust prefers its Cython handler (faust/_cython/conductor.pyx) when built; it decodes as the Python one does.
        return self._compiler.lean(self, tp, channels) or super()._build_handler(tp, channels)

    def _compile_message_handler(self) -> Handler:
        if self.app.client_only:
            return super()._compile_message_handler()
        get_callback_for_tp = self._tp_to_callback.__getitem__
        lock = self._tp_to_callback_lock

        async def on_message(message: Message) -> None:
            if lock.locked():
                async with lock:
                    callback = get_callback_for_tp(message.tp)
            else:
                callback = get_callback_for_tp(message.tp)
            return await callback(message)

        return on_message
