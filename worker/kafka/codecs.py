"""aiokafka's zstd compression of produced batches through one reused compression context per thread."""

from __future__ import annotations

import importlib
import threading
from typing import Any

import aiokafka.codec
import zstandard

# Kafka's default zstd level (KIP-390), the level aiokafka's own zstd_encode uses.
ZSTD_LEVEL = 3

_contexts = threading.local()
# What install() replaces, for the canary test that tells when upstream stops making a context per call.
UPSTREAM_ZSTD_ENCODE = aiokafka.codec.zstd_encode
_MODULES_THAT_COMPRESS = ("aiokafka.codec", "aiokafka.record.default_records", "aiokafka.record._crecords.default_records")


def zstd_encode(payload: Any, level: int | None = None) -> bytes:
    """A zstd frame of ``payload``, as aiokafka's ``zstd_encode`` returns, without a new context per batch.

    Upstream calls ``cramjam.zstd.compress``, which sets up a compression context for every batch: ~20 us a call
    whatever the batch's size, and the worker flushes a batch per output partition every few milliseconds (py-spy:
    8% of the worker's CPU). A context kept per thread (one is not safe to share across threads) costs ~3 us.
    """
    wanted = ZSTD_LEVEL if level is None else level
    compressor = getattr(_contexts, "compressor", None)
    if compressor is None or _contexts.level != wanted:
        compressor = _contexts.compressor = zstandard.ZstdCompressor(level=wanted)
        _contexts.level = wanted
    return compressor.compress(payload)


def install() -> None:
    """Make every record batch builder of this process compress zstd with :func:`zstd_encode`; idempotent.

    The builders (aiokafka's Cython one and its pure-Python fallback) look ``zstd_encode`` up in their own module's
    globals at each batch, so the name is replaced there as well as in ``aiokafka.codec``.
    """
    for name in _MODULES_THAT_COMPRESS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - aiokafka built without its C extensions
            continue
        module.zstd_encode = zstd_encode  # type: ignore[attr-defined]
