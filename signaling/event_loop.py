"""The event loop meshpeer's commands run on: uvloop where it is installed, else asyncio's.

uvloop reads sockets and runs callbacks in C. For the server that is relaying (about 20%
cheaper); for a peer agent it is every RTP datagram's wake-up: a receive-only agent beside
one 640x480@30 sender costs 15% less CPU on it (docs/benchmarks.md). Library users pick
their own loop; ``uvloop.run(main())`` gives a bot the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """uvloop's loop when installed and wanted, else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """``asyncio.run(main)`` on :func:`new_event_loop`'s loop."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(use_uvloop)) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``: which loop ``loop`` is, for logs and stats."""
    return type(loop).__module__.split(".")[0]
