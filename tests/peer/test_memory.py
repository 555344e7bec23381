"""peer.memory: malloc_trim gives freed memory back, and the figures the stats report."""

from __future__ import annotations

import json
import subprocess
import sys
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
    assert (default.malloc_arenas, default.malloc_trim, default.malloc_mmap_threshold) == (
        2,
        60.0,
        0,  # glibc's sliding threshold: fixing it did not lower the soak's slope
    )
    off = parser.parse_args(
        ["join", "--malloc-arenas", "0", "--malloc-trim", "0", "--malloc-mmap-threshold", "0"]
    )
    assert (off.malloc_arenas, off.malloc_trim, off.malloc_mmap_threshold) == (0, 0.0, 0)
    assert not memory.limit_arenas(0)  # 0: glibc's default kept, nothing changed
    assert not memory.fix_mmap_threshold(0)


#: Run in a fresh interpreter (the setting is for the whole process, for good): frees a
#: 4 MiB block, then holds a 1 MiB one; prints mallopt's answer and the mmapped KiB.
_AFTER_A_BIG_FREE = """
import json, sys
from peer import memory
fixed = memory.fix_mmap_threshold(int(sys.argv[1]))
big = bytearray(4 << 20)
del big  # glibc's own rule: the threshold rises to 4 MiB here
before = memory.memory_use().malloc_mmapped
block = bytearray(1 << 20)
print(json.dumps({"fixed": fixed, "mmapped": memory.memory_use().malloc_mmapped - before}))
"""


def _after_a_big_free(kib: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _AFTER_A_BIG_FREE, str(kib)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, int] = json.loads(out)
    return result


def test_a_fixed_mmap_threshold_keeps_frame_sized_blocks_out_of_the_arenas() -> None:
    """With glibc's sliding threshold a 1 MiB block freed after a 4 MiB one comes from
    the heap; fixed at 128 KiB (``--malloc-mmap-threshold 128``, the soak's ``fixed``
    variant) it gets its own mmap: the setting is applied."""
    fixed = _after_a_big_free(128)
    assert fixed["fixed"] and fixed["mmapped"] >= 1024, fixed
    sliding = _after_a_big_free(0)
    assert not sliding["fixed"] and sliding["mmapped"] < 1024, sliding
