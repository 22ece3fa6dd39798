"""A thread that produces events in paced chunks while a fault test does its damage."""

from __future__ import annotations

import asyncio
import threading
import time

from aiokafka import AIOKafkaProducer

CHUNK = 250
CHUNK_INTERVAL = 0.25  # about 1,000 events/s


class Feeder(threading.Thread):
    """Produces ``messages`` in paced chunks with one acks=all producer that rides out broker failures itself.

    With ``hold_at`` it pauses before that many events until ``release`` is set.
    """

    def __init__(
        self, bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], hold_at: int | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.messages = bootstrap, topic, messages
        self.hold_at = len(messages) if hold_at is None else hold_at
        self.release = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._feed())
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            self.error = error

    async def _feed(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, request_timeout_ms=30_000)
        await producer.start()
        try:
            for start in range(0, len(self.messages), CHUNK):
                if start >= self.hold_at and not self.release.is_set():
                    released = await asyncio.to_thread(self.release.wait, 300)
                    if not released:
                        raise TimeoutError(f"the feeder was not released within 300s ({self.sent} sent)")
                began = time.monotonic()
                chunk = self.messages[start:start + CHUNK]
                await asyncio.gather(*[await producer.send(self.topic, value, key=key) for key, value in chunk])
                self.sent += len(chunk)
                await asyncio.sleep(max(0.0, CHUNK_INTERVAL - (time.monotonic() - began)))
        finally:
            await producer.stop()

    def wait_sent(self, at_least: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < at_least and self.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.error is not None:
            raise self.error
        assert self.sent >= at_least, f"the feeder sent {self.sent} < {at_least} events within {timeout}s"

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"the feeder did not finish within {timeout}s ({self.sent} sent)"
        if self.error is not None:
            raise self.error
