"""Per-peer serial work: what concerns one remote peer runs in order, one step at a time.

Negotiation steps for one peer (close, offer, answer, apply, candidate) must never overlap,
or an answer lands on a connection that was replaced meanwhile; different peers proceed in
parallel. Bounded: a peer flooding us with messages gets its excess dropped and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from peer.room import Room
from signaling.protocol import PeerId

log = logging.getLogger(__name__)

#: Steps waiting per remote peer; a flood beyond this is dropped (and logged).
MAX_PENDING_PER_PEER = 256

Work = Callable[[], Coroutine[Any, Any, None]]


class PeerWork:
    """Runs scheduled work per peer in order; tasks of its own are tracked and cancelled.

    Each peer's lock and backlog are in its record of ``room``."""

    def __init__(self, room: Room, max_pending: int = MAX_PENDING_PER_PEER) -> None:
        self.max_pending = max_pending
        self.closed = False
        self._room = room
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a tracked task: an error it ends with is logged, never lost."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def schedule(self, peer: PeerId, work: Work, what: str) -> bool:
        """Run ``work`` after everything already scheduled for ``peer``.

        False when dropped: closed, or too much already waiting for ``peer``.
        """
        if self.closed:
            return False
        record = self._room[peer]
        if record.backlog >= self.max_pending:
            log.warning("too much pending for %s: dropping %s", peer, what)
            self._room.tidy(peer)
            return False
        record.backlog += 1
        if record.lock is None:
            record.lock = asyncio.Lock()
        lock = record.lock

        async def run() -> None:
            try:
                async with lock:
                    await work()
            finally:
                record.backlog -= 1
                if record.backlog == 0:
                    if not lock.locked():
                        record.lock = None
                    self._room.tidy(peer)

        self.spawn(run(), f"{what} {peer}")
        return True

    async def close(self) -> None:
        """Accept nothing more; cancel what runs or waits, and wait for it to end."""
        self.closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())
