"""The room machine: what the agent does about the room, sans I/O (as the server's Session).

It takes what happens (a ``peer-list``, ``peer-joined``, ``peer-left``, a connection's state
change, a timer running out, the signaling socket lost), updates the peers' records in
:class:`peer.room.Room`, and returns what to carry out: events to emit, connections to
offer or close, timers to start; and what to do with an offer, answer or candidate. Each
transition has its own result type: a dataclass here (:class:`Listed`...) or the rule's
enum from :mod:`peer.mesh` (:class:`peer.mesh.OfferReply`...). The rules are the decisions
of :mod:`peer.mesh`; the agent (:mod:`peer.room_io`) and the negotiator only carry them
out, so ``tests/peer/test_machine.py`` drives it with random message sequences and no event
loop.

A link is read through :class:`LinkView` (its ``remote``, ``role`` and ``state``), so the
tests give it plain objects instead of :class:`peer.link.PeerLink`; the negotiation
transitions also read its ``offer_out`` and ``has_remote_description``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, assert_never

import peer.events as ev
import peer.mesh as mesh
from peer.mesh import (
    AnswerUse,
    CandidateUse,
    Hangup,
    LinkState,
    Listing,
    OfferReply,
    OfferWait,
    Origin,
    Recovery,
    Role,
    Welcome,
)
from peer.room import Room
from signaling.protocol import PeerId

if TYPE_CHECKING:
    from peer.events import Event


class LinkView(Protocol):
    """What the machine reads of a connection."""

    @property
    def remote(self) -> PeerId: ...

    @property
    def role(self) -> Role: ...

    @property
    def state(self) -> LinkState: ...


@dataclass
class Listed:
    """After a ``peer-list`` (a join or a rejoin): offer to ``offer``, close ``close``."""

    events: list[Event] = field(default_factory=list)
    offer: list[PeerId] = field(default_factory=list)
    close: list[PeerId] = field(default_factory=list)


@dataclass
class Arrived:
    """After ``peer-joined``: cancel its grace (a resume); close our half-made connection;
    wait ``await_offer`` seconds for its offer (then :meth:`RoomMachine.offer_awaited`)."""

    events: list[Event] = field(default_factory=list)
    close: bool = False
    await_offer: float | None = None


@dataclass
class Departed:
    """After ``peer-left``: ``forget`` (no connection: the sinks and its queued data let go
    of it); ``close`` its connection now, or ``grace``: after the agent's
    ``peer_left_grace`` (then :meth:`RoomMachine.grace_over`)."""

    events: list[Event] = field(default_factory=list)
    forget: bool = False
    close: bool = False
    grace: bool = False


@dataclass
class LinkChanged:
    """After a connection's state changed: ``close`` it (its peer left), close it and
    ``await_reoffer`` (the other side offers again), or ``reoffer`` after the backoff."""

    events: list[Event] = field(default_factory=list)
    close: bool = False
    await_reoffer: bool = False
    reoffer: bool = False


class RoomMachine:
    """The room as ``me`` sees it: the records of ``room`` and the rules of :mod:`peer.mesh`."""

    def __init__(self, me: PeerId, room: Room) -> None:
        self.me = me
        self.room = room

    def _state(self, peer: PeerId) -> LinkState | None:
        link = self.room.link(peer)
        return link.state if link is not None else None

    def peer_list(self, listed: Sequence[PeerId], rejoin: bool) -> Listed:
        peers = tuple(p for p in listed if p != self.me)
        step = Listed(events=[ev.Joined(peers, rejoin)])
        new = [p for p in peers if not self.room.is_member(p)]
        for record in self.room:
            record.member = record.id in peers
            self.room.tidy(record.id)
        for peer in peers:
            self.room[peer].member = True
        step.events.extend(ev.PeerJoined(peer) for peer in new)
        states = {peer: link.state for peer, link in self.room.links.items()}
        for peer, listing in mesh.on_peer_list(self.me, peers, states).items():
            match listing:
                case Listing.OFFER:
                    step.offer.append(peer)
                case Listing.CLOSE:
                    step.close.append(peer)
                case Listing.KEEP:
                    pass
                case _:
                    assert_never(listing)
        return step

    def peer_joined(self, peer: PeerId) -> Arrived | None:
        """None for our own ``peer-joined``. The caller cancels the peer's grace first."""
        if peer == self.me:
            return None
        self.room[peer].member = True
        step = Arrived(events=[ev.PeerJoined(peer)])
        state = self._state(peer)
        if mesh.on_peer_joined(state) is Welcome.AWAIT_OFFER:
            step.close = state is not None
            step.await_offer = mesh.OFFER_WAIT
        return step

    def offer_awaited(self, peer: PeerId) -> bool:
        """Its offer did not come in time: whether to offer ourselves."""
        return self.room.is_member(peer) and (
            mesh.on_offer_awaited(self._state(peer)) is OfferWait.OFFER
        )

    def peer_left(self, peer: PeerId) -> Departed:
        record = self.room.get(peer)
        if record is not None:
            record.member = False
            self.room.tidy(peer)
        step = Departed(events=[ev.PeerLeft(peer)])
        state = self._state(peer)
        hangup = mesh.on_peer_left(state)
        step.forget = hangup is Hangup.IGNORE
        step.close = hangup is Hangup.CLOSE
        step.grace = hangup is Hangup.CLOSE_AFTER_GRACE
        return step

    def grace_over(self, peer: PeerId) -> bool:
        """Whether to close now: it did not come back meanwhile."""
        return not self.room.is_member(peer)

    @staticmethod
    def signaling_lost(close_code: int | None) -> bool:
        """Whether the ``peer-left`` graces running now are released (the connections kept):
        the server went away, not the peers."""
        return mesh.keep_after_signaling_closed(close_code)

    def link_state(self, link: LinkView) -> LinkChanged | None:
        """None for a connection that is not its peer's current one any more."""
        peer = link.remote
        record = self.room.get(peer)
        if record is None or record.link is not link:
            return None
        step = LinkChanged(events=[ev.ConnectionStateChanged(peer, link.state)])
        if link.state is LinkState.CONNECTED:
            record.reoffers = 0  # the next failure starts the backoff from the beginning
            record.failures = 0
        elif link.state is LinkState.FAILED:
            record.failures += 1
        recovery = mesh.on_connection_state(link.role, link.state, record.member)
        step.close = recovery is Recovery.CLOSE
        step.await_reoffer = recovery is Recovery.AWAIT_REOFFER
        step.reoffer = recovery is Recovery.REOFFER
        return step

    # -- the negotiation messages: decided here, carried out by the Negotiator -------------
    def offer(self, peer: PeerId, origin: Origin) -> OfferReply:
        """``peer``'s offer (``origin``: compared with the connection we hold, by
        :func:`peer.renegotiation.origin`): answer, renegotiate, replace or ignore it."""
        link = self.room.link(peer)
        if link is None:
            return mesh.on_offer(self.me, peer, None, origin)
        return mesh.on_offer(self.me, peer, link.state, origin, offer_out=link.offer_out)

    def answer(self, peer: PeerId, origin: Origin) -> AnswerUse:
        """``peer``'s answer: apply it to our offer, replace the connection, or drop it."""
        link = self.room.link(peer)
        if link is None:
            return mesh.on_answer(None)
        return mesh.on_answer(link.state, offer_out=link.offer_out, origin=origin)

    def candidate(self, peer: PeerId) -> CandidateUse:
        """A candidate from ``peer``: the one place that decides to add it or queue it."""
        link = self.room.link(peer)
        if link is None:
            return mesh.on_candidate(None, has_remote_description=False)
        return mesh.on_candidate(link.state, link.has_remote_description)
