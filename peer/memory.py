"""glibc's allocator, kept from creeping in a process that runs for hours (``meshpeer join``).

Frames and packets are allocated on one thread (aiortc's decoder and encoder threads,
PyAV, the recording writer) and freed on another; glibc's malloc gives each thread its own
arena (up to 8 per core) and keeps what is freed in them, fragmented, instead of giving it
back to the system. The process's RSS then grows outside the Python heap although nothing
is held (see "Soak" in docs/benchmarks.md for the figures). Two knobs bound it: fewer
arenas (``mallopt(M_ARENA_MAX)``, before the threads start) and ``malloc_trim(0)`` now and
then, which returns the free pages of every arena. Off with ``--malloc-arenas 0
--malloc-trim 0``; a no-op where the C library is not glibc. A third, a fixed mmap
threshold (``--malloc-mmap-threshold 128``), stops malloc's free bytes growing but not RSS
(the trim already returned them): off by default, kept for the soak's comparison. Library
users who want the defaults call :func:`limit_arenas` and run :func:`trim_every`
themselves: an agent does not change its process's allocator on its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: mallopt's parameter numbers (glibc malloc.h): the arena limit, the size from which a
#: block gets its own mmap.
M_ARENA_MAX = -8
M_MMAP_THRESHOLD = -3


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes in the main arena and the others, from the system
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in mmapped blocks
            "usmblks",
            "fsmblks",
            "uordblks",  # in use
            "fordblks",  # free, kept by malloc
            "keepcost",
        )
    ]


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()


def limit_arenas(count: int) -> bool:
    """At most ``count`` malloc arenas for the threads started from now on; False where
    this is not glibc (or ``count`` is 0: glibc's default kept)."""
    if _LIBC is None or count <= 0:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, count))


def fix_mmap_threshold(kib: int) -> bool:
    """Blocks of ``kib`` KiB and more get their own mmap, returned to the system on free,
    for good; False where this is not glibc (or ``kib`` is 0: glibc's default kept).

    glibc starts at 128 KiB but raises the threshold (up to 32 MiB) each time such a block
    is freed, so that later frame-sized blocks come from the arenas and fragment them;
    setting it turns that adjustment off (and the trim threshold's with it)."""
    if _LIBC is None or kib <= 0:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, kib * 1024))


def trim() -> bool:
    """Give the free pages of every arena back to the system (``malloc_trim(0)``): True if
    some were."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


async def trim_every(seconds: float) -> None:
    """:func:`trim` every ``seconds``, on a worker thread (it walks every arena), until
    cancelled."""
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(trim)


@dataclass(frozen=True)
class MemoryUse:
    """Where this process's memory is, in KiB: what would tell a leak (``malloc_used``
    or ``python_heap`` growing) from fragmentation (``malloc_free`` growing)."""

    rss: int
    #: Held by malloc for the program / kept free by malloc (glibc's mallinfo2).
    malloc_used: int | None
    malloc_free: int | None
    #: Of ``malloc_used``, the blocks that have a mmap of their own (``--malloc-mmap-threshold``).
    malloc_mmapped: int | None
    #: The Python heap as tracemalloc sees it, when it is tracing (PYTHONTRACEMALLOC=1).
    python_heap: int | None

    def to_json(self) -> dict[str, int | None]:
        return {
            "rss_kib": self.rss,
            "malloc_used_kib": self.malloc_used,
            "malloc_free_kib": self.malloc_free,
            "malloc_mmapped_kib": self.malloc_mmapped,
            "python_heap_kib": self.python_heap,
        }


def memory_use() -> MemoryUse:
    """This process's :class:`MemoryUse` now."""
    rss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    used = free = mmapped = None
    if _LIBC is not None and hasattr(_LIBC, "mallinfo2"):
        _LIBC.mallinfo2.restype = _MallInfo2
        info: _MallInfo2 = _LIBC.mallinfo2()
        used = (info.uordblks + info.hblkhd) // 1024
        free = info.fordblks // 1024
        mmapped = info.hblkhd // 1024
    heap = tracemalloc.get_traced_memory()[0] // 1024 if tracemalloc.is_tracing() else None
    return MemoryUse(
        rss=rss, malloc_used=used, malloc_free=free, malloc_mmapped=mmapped, python_heap=heap
    )
