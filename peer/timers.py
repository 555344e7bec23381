"""The agent's per-peer timers: the grace before a ``peer-left`` closes a working connection,
and the backoff before a failed connection is offered again.

Why a grace: a server that shuts down sends ``peer-left`` for everyone just before closing
every socket, and a peer that resumes shows up as ``peer-left`` then ``peer-joined``; in
both cases the media connection still works and is kept (:mod:`peer.mesh`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from peer import mesh
from signaling.protocol import PeerId


class PeerTimers:
    def __init__(self) -> None:
        self._grace: dict[PeerId, asyncio.TimerHandle] = {}
        self._reoffer: dict[PeerId, asyncio.TimerHandle] = {}
        self._attempts: dict[PeerId, int] = {}
        self._offer_wait: dict[PeerId, asyncio.TimerHandle] = {}

    @staticmethod
    def _start(
        timers: dict[PeerId, asyncio.TimerHandle],
        peer: PeerId,
        delay: float,
        then: Callable[[], object],
    ) -> None:
        """``then`` after ``delay``, replacing ``peer``'s timer of that kind; forgotten once due."""
        old = timers.pop(peer, None)
        if old is not None:
            old.cancel()

        def due() -> None:
            timers.pop(peer, None)
            then()

        timers[peer] = asyncio.get_running_loop().call_later(delay, due)

    # -- grace ---------------------------------------------------------------------------
    def hold(self, peer: PeerId, delay: float, then: Callable[[], object]) -> None:
        """Call ``then`` after ``delay`` unless :meth:`release` comes first (restarts)."""
        self._start(self._grace, peer, delay, then)

    def release(self, peer: PeerId) -> bool:
        """Cancel ``peer``'s grace; True if one was running (the peer came back)."""
        handle = self._grace.pop(peer, None)
        if handle is not None:
            handle.cancel()
        return handle is not None

    def release_all(self) -> list[PeerId]:
        """Cancel every grace (the server went away, not the peers); who was held."""
        held = list(self._grace)
        for peer in held:
            self.release(peer)
        return held

    # -- waiting for a newcomer's offer ------------------------------------------------------
    def await_offer(self, peer: PeerId, delay: float, then: Callable[[], object]) -> None:
        """Call ``then`` after ``delay`` (restarts): the caller checks whether it came."""
        self._start(self._offer_wait, peer, delay, then)

    # -- re-offers -----------------------------------------------------------------------
    def reoffer_later(self, peer: PeerId, then: Callable[[], object]) -> float:
        """Call ``then`` after this peer's next backoff delay (peer.mesh.RECONNECT_DELAYS)."""
        attempt = self._attempts.get(peer, 0)
        self._attempts[peer] = attempt + 1
        delay = mesh.reconnect_delay(attempt, random.random())
        self._start(self._reoffer, peer, delay, then)
        return delay

    def connected(self, peer: PeerId) -> None:
        """The connection works: the next failure starts the backoff from the beginning."""
        self._attempts.pop(peer, None)

    def forget(self, peer: PeerId) -> None:
        self._attempts.pop(peer, None)

    def cancel_all(self) -> None:
        for timers in (self._grace, self._reoffer, self._offer_wait):
            for handle in timers.values():
                handle.cancel()
            timers.clear()
