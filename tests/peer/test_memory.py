"""peer.memory: malloc_trim gives freed memory back, and the figures the stats report."""

from __future__ import annotations

import tracemalloc

from peer import memory
from peer.cli import build_parser

MIB = 1024


def test_trim_returns_what_malloc_kept_after_free() -> None:
    """Blocks freed below one still held stay in RSS until malloc_trim(0) returns them
    (the fragmentation a long run accumulates)."""
    blocks = [bytearray(60 * 1024) for _ in range(800)]  # 47 MiB, malloc's heap, touched
    pin = bytearray(60 * 1024)  # above them: free() alone cannot shrink the heap's top
    del blocks
    kept = memory.memory_use()
    assert kept.malloc_free is not None and kept.malloc_free > 40 * MIB, kept
    assert memory.trim()
    after = memory.memory_use()
    assert kept.rss - after.rss > 30 * MIB, (kept, after)
    del pin


def test_memory_use_tells_held_from_free_and_the_python_heap() -> None:
    tracemalloc.start()
    try:
        before = memory.memory_use()
        held = [bytearray(100 * 1024) for _ in range(200)]  # 20 MiB
        now = memory.memory_use()
    finally:
        tracemalloc.stop()
    assert before.malloc_used is not None and now.malloc_used is not None
    assert now.malloc_used - before.malloc_used > 15 * MIB
    assert before.python_heap is not None and now.python_heap is not None
    assert now.python_heap - before.python_heap > 15 * MIB
    assert now.to_json()["rss_kib"] == now.rss
    del held
    assert memory.memory_use().python_heap is None  # not tracing: not reported


def test_join_tunes_the_allocator_unless_told_not_to() -> None:
    parser = build_parser()
    default = parser.parse_args(["join"])
    assert (default.malloc_arenas, default.malloc_trim) == (2, 60.0)
    off = parser.parse_args(["join", "--malloc-arenas", "0", "--malloc-trim", "0"])
    assert (off.malloc_arenas, off.malloc_trim) == (0, 0.0)
    assert not memory.limit_arenas(0)  # 0: glibc's default kept, nothing changed
