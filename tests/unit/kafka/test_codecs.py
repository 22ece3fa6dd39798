"""zstd output batches through a reused compression context: what it replaces upstream, and batches still read back."""

from __future__ import annotations

import importlib
import inspect
import threading

import cramjam
import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from worker.kafka import codecs

ZSTD = 4  # aiokafka's compression_type for zstd


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in codecs._MODULES_THAT_COMPRESS:  # noqa: SLF001 - restored after the test
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "zstd_encode", module.zstd_encode)
    codecs.install()


def build(records: list[tuple[bytes, bytes]]) -> bytes:
    builder = BatchBuilder(1 << 20, ZSTD)
    for key, value in records:
        assert builder.append(key=key, value=value, timestamp=None, headers=[("h", b"1")]) is not None
    return bytes(builder._build())  # noqa: SLF001 - what the sender puts on the wire


def test_canary_upstream_compresses_each_batch_with_a_new_context() -> None:
    # When this fails, aiokafka no longer calls cramjam's one-shot compress per batch: measure whether
    # worker/kafka/codecs.py still pays for itself, and drop it if not.
    assert "cramjam.zstd.compress(" in inspect.getsource(codecs.UPSTREAM_ZSTD_ENCODE)


def test_canary_the_batch_builder_reads_zstd_encode_from_its_module_at_each_batch(
    installed: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    compressed: list[int] = []

    def spy(payload: bytes, level: int | None = None) -> bytes:
        compressed.append(len(payload))
        return codecs.zstd_encode(payload, level)

    module = importlib.import_module(type(BatchBuilder(1024, ZSTD)._builder).__module__)  # noqa: SLF001
    assert module.zstd_encode is codecs.zstd_encode
    monkeypatch.setattr(module, "zstd_encode", spy)
    build([(b"k", b"v" * 100)])
    assert len(compressed) == 1


def test_batches_read_back_with_every_record(installed: None) -> None:
    records = [(f"product-{i}".encode(), f'{{"decision": "block", "n": {i}}}'.encode() * 5) for i in range(500)]
    data = build(records)
    batch = MemoryRecords(data).next_batch()
    assert batch.compression_type == ZSTD
    assert [(record.key, record.value, record.headers) for record in batch] == [
        (key, value, [("h", b"1")]) for key, value in records
    ]


@pytest.mark.parametrize("level", [None, 1, 3, 19], ids=["default", "level-1", "level-3", "level-19"])
def test_frames_are_plain_zstd_at_the_level_asked(level: int | None) -> None:
    payload = b"the same catalog text again and again " * 400
    frame = codecs.zstd_encode(payload, level)
    assert bytes(cramjam.zstd.decompress(frame)) == payload
    assert frame == codecs.zstandard.ZstdCompressor(level=level or codecs.ZSTD_LEVEL).compress(payload)


def test_each_thread_compresses_with_its_own_context() -> None:
    contexts: list[object] = []

    def compress() -> None:
        codecs.zstd_encode(b"payload" * 100)
        contexts.append(codecs._contexts.compressor)  # noqa: SLF001

    threads = [threading.Thread(target=compress) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    compress()
    assert len({id(context) for context in contexts}) == 3
    codecs.zstd_encode(b"again")
    assert codecs._contexts.compressor is contexts[-1]  # noqa: SLF001 - reused, not made anew
