"""The lean conductor hands records over as Faust's does; canaries on the per-record work of Faust's own conductor."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import faust
import pytest
from faust.transport import conductor as faust_conductor
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from worker.core import load_bundled_policy
from worker.kafka.conductor import Conductor, ConductorCompiler
from worker.kafka.schema import RawSchema
from worker.settings import Settings
from worker.stream.app import create_app

TOPIC = "catalog.product-upserts"
PARTITION = TP(TOPIC, 2)


@pytest.fixture
def app() -> Iterator[faust.App]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "STATE_STORE": "memory"})
        yield create_app(settings, load_bundled_policy())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def message(offset: int) -> ConsumerMessage:
    return ConsumerMessage(
        TOPIC, 2, offset, 0.0, 0, [("traceparent", b"00-ab")], b"P-1", b'{"x": 1}', None, tp=PARTITION,
    )


def handed(app: faust.App, handler: Any, channel: Any, offset: int) -> Any:
    app.loop.run_until_complete(handler(message(offset)))
    return channel.queue.get_nowait()


def test_the_app_uses_the_lean_conductor(app: faust.App) -> None:
    assert isinstance(app.topics, Conductor)


def test_a_raw_record_becomes_the_event_fausts_handler_makes(app: faust.App) -> None:
    app.flow_control.resume()
    channel = app.topic(TOPIC, schema=RawSchema(), key_serializer="raw", value_serializer="raw")
    lean = ConductorCompiler().build(app.topics, PARTITION, {channel})
    faust_handler = faust_conductor.ConductorCompiler().build(app.topics, PARTITION, {channel})
    ours, theirs = handed(app, lean, channel, 7), handed(app, faust_handler, channel, 7)
    assert type(ours) is type(theirs)
    assert (ours.key, ours.value, ours.headers, ours.message.offset) == (
        theirs.key, theirs.value, theirs.headers, theirs.message.offset,
    )
    assert ours.message.refcount == theirs.message.refcount == 1


def test_other_channels_get_fausts_own_handler(app: faust.App) -> None:
    other = app.topic(TOPIC, value_type=dict)  # Faust's own schema: it must decode
    assert ConductorCompiler().lean(app.topics, PARTITION, {other}) is None
    raw = app.topic(TOPIC, schema=RawSchema())
    assert ConductorCompiler().lean(app.topics, PARTITION, {raw, other}) is None


def test_a_handler_waits_while_the_flow_is_suspended(app: faust.App) -> None:
    channel = app.topic(TOPIC, schema=RawSchema())
    lean = ConductorCompiler().build(app.topics, PARTITION, {channel})
    app.flow_control.suspend()
    pending = app.loop.create_task(lean(message(1)))
    app.loop.run_until_complete(asyncio.sleep(0))
    assert not pending.done() and channel.queue.empty()
    app.flow_control.resume()
    app.loop.run_until_complete(pending)
    assert channel.queue.get_nowait().message.offset == 1


# --- canaries: the per-record work of Faust's conductor that worker/kafka/conductor.py leaves out -----------------


def test_canary_fausts_handler_decodes_through_the_schema_and_waits_on_the_producer_buffer_per_record() -> None:
    source = inspect.getsource(faust_conductor.ConductorCompiler.build)
    assert "await acquire_flow_control()" in source and "await wait_until_producer_ebb()" in source
    assert "await chan.decode(message, propagate=True)" in source


def test_canary_fausts_conductor_takes_a_lock_for_every_record() -> None:
    source = inspect.getsource(faust_conductor.Conductor._compile_message_handler)
    assert "async with self._tp_to_callback_lock:" in source
