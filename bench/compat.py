"""What the benches import from worker/, from either layout, so `--code REV` still runs trees older than the packages."""

from __future__ import annotations

try:
    from worker.commands.sample import generate
    from worker.stream.processing import DEAD_LETTER, MemoryStateStore, Processor
except ModuleNotFoundError:  # a tree from before worker/ was split into core, kafka, stream and commands
    from worker.processing import DEAD_LETTER, MemoryStateStore, Processor  # type: ignore[no-redef]
    from worker.sample import generate  # type: ignore[no-redef]

__all__ = ["DEAD_LETTER", "MemoryStateStore", "Processor", "generate"]
