"""The hand-written loops' per-product state: a dict whose every change is queued for a changelog topic."""

from __future__ import annotations


class ChangelogStore:
    """Per-product state in a dict; each change is queued for the changelog topic (the worker's table does the same)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.writes: list[tuple[bytes, bytes | None, int]] = []

    def get(self, key: bytes, partition: int = 0) -> bytes | None:  # older worker trees ask by key alone
        return self.data.get(key)

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        self.data[key] = value
        self.writes.append((key, value, partition))

    def delete(self, key: bytes, partition: int) -> None:
        if self.data.pop(key, None) is not None:
            self.writes.append((key, None, partition))
