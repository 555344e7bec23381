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
from typing import Literal

import peer.mesh as mesh
from peer.room import Room
from signaling.protocol import PeerId

#: The timer fields of :class:`peer.room.RemotePeer`.
Slot = Literal["grace", "reoffer", "offer_wait"]


class PeerTimers:
    """Starts and cancels the timers kept in each peer's record of ``room``."""

    def __init__(self, room: Room) -> None:
        self._room = room

    def _start(self, slot: Slot, peer: PeerId, delay: float, then: Callable[[], object]) -> None:
        """``then`` after ``delay``, replacing ``peer``'s timer of that kind; forgotten once due."""
        self._cancel(slot, peer)
        record = self._room[peer]

        def due() -> None:
            setattr(record, slot, None)
            self._room.tidy(peer)
            then()

        setattr(record, slot, asyncio.get_running_loop().call_later(delay, due))

    def _cancel(self, slot: Slot, peer: PeerId) -> bool:
        record = self._room.get(peer)
        handle: asyncio.TimerHandle | None = getattr(record, slot) if record else None
        if record is None or handle is None:
            return False
        handle.cancel()
        setattr(record, slot, None)
        self._room.tidy(peer)
        return True

    # -- grace ---------------------------------------------------------------------------
    def hold(self, peer: PeerId, delay: float, then: Callable[[], object]) -> None:
        """Call ``then`` after ``delay`` unless :meth:`release` comes first (restarts)."""
        self._start("grace", peer, delay, then)

    def release(self, peer: PeerId) -> bool:
        """Cancel ``peer``'s grace; True if one was running (the peer came back)."""
        return self._cancel("grace", peer)

    def release_all(self) -> list[PeerId]:
        """Cancel every grace (the server went away, not the peers); who was held."""
        return [record.id for record in self._room if self.release(record.id)]

    # -- waiting for a newcomer's offer ------------------------------------------------------
    def await_offer(self, peer: PeerId, delay: float, then: Callable[[], object]) -> None:
        """Call ``then`` after ``delay`` (restarts): the caller checks whether it came."""
        self._start("offer_wait", peer, delay, then)

    # -- re-offers -----------------------------------------------------------------------
    def reoffer_later(self, peer: PeerId, then: Callable[[], object]) -> float:
        """Call ``then`` after this peer's next backoff delay (peer.mesh.RECONNECT_DELAYS)."""
        record = self._room[peer]
        attempt = record.reoffers
        record.reoffers = attempt + 1
        delay = mesh.reconnect_delay(attempt, random.random())
        self._start("reoffer", peer, delay, then)
        return delay

    def forget(self, peer: PeerId) -> None:
        record = self._room.get(peer)
        if record is not None:
            record.reoffers = 0
            self._room.tidy(peer)

    def cancel_all(self) -> None:
        for record in self._room:
            for slot in ("grace", "reoffer", "offer_wait"):
                self._cancel(slot, record.id)
