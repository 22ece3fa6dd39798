"""Freed large messages leave RSS: glibc's mmap threshold is fixed where glibc is the C library."""

from __future__ import annotations

import platform

from worker.stream import memory


def test_large_blocks_are_mapped_on_their_own_on_glibc() -> None:
    expected = platform.libc_ver()[0] == "glibc"
    assert memory.keep_large_blocks_out_of_the_heap() is expected
