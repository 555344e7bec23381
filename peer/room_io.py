"""The room machine's I/O side: what the signaling server says about the room, carried out.

:class:`peer.machine.RoomMachine` decides, sans I/O; :class:`RoomIO` feeds it the server's
messages (``peer-list``, ``peer-joined``, ``peer-left``, a lost socket) and the expiry of
the grace and offer-wait timers, and carries out each result: events to emit, offers and
closes scheduled on the :class:`peer.negotiation.Negotiator`, timers started on
:class:`peer.timers.PeerTimers`, what a departed peer leaves in the sinks and data
channels forgotten. Offers, answers and candidates go to the negotiator as they are.
(Link state changes are carried out by the negotiator, which owns the links.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import peer.events as ev
import peer.mesh as mesh
from peer.dataplane import DataPlane
from peer.events import Event
from peer.machine import RoomMachine
from peer.media.tap import Sinks
from peer.negotiation import Negotiator
from peer.serial import PeerWork
from peer.timers import PeerTimers
from signaling import protocol as wire
from signaling.protocol import Message, PeerId, PeerList

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoomIO:
    """Carries out the room machine's results (the agent's signaling callbacks).

    ``grace``: the agent's ``peer_left_grace``, read when a peer leaves.
    """

    machine: RoomMachine
    negotiator: Negotiator
    work: PeerWork
    timers: PeerTimers
    sinks: Sinks
    data: DataPlane
    emit: Callable[[Event], None]
    grace: Callable[[], float]

    def _emit_all(self, events: Sequence[Event]) -> None:
        for event in events:
            self.emit(event)

    def joined(self, peer_list: PeerList, rejoin: bool) -> None:
        """The ``peer-list`` that answers each join and rejoin."""
        self.negotiator.hand_servers(peer_list.ice_servers)
        step = self.machine.peer_list(peer_list.peers, rejoin)
        self._emit_all(step.events)
        for peer in step.offer:
            self.negotiator.schedule_offer(peer)
        for peer in step.close:
            self.negotiator.schedule_close(peer)

    def signaling_lost(self, close_code: int | None) -> None:
        """The signaling socket went (not for good: that is the agent's to handle)."""
        self.emit(ev.SignalingLost(close_code))
        if self.machine.signaling_lost(close_code):
            for peer in self.timers.release_all():
                log.info("kept the connection to %s: the server went away, not the peer", peer)

    def on_message(self, message: Message) -> None:
        if isinstance(message, wire.Offer | wire.Answer | wire.Candidate):
            self.negotiator.on_signal(message)
        elif isinstance(message, wire.PeerJoined):
            self._peer_joined(message.peer_id)
        elif isinstance(message, wire.PeerLeft):
            self._peer_left(message.peer_id)
        elif isinstance(message, wire.IceServers):
            self.negotiator.hand_servers(message.ice_servers)  # fresh TURN credentials
        elif isinstance(message, wire.Custom):
            self.emit(ev.RoomMessage(message.sender, message.type, message.data))
        # Error: logged by the signaling client; nothing here depends on it.

    def _peer_joined(self, peer: PeerId) -> None:
        step = self.machine.peer_joined(peer)
        if step is None:
            return
        self.timers.release(peer)  # it left and came back at once: a resume, keep the link
        self._emit_all(step.events)
        if step.close:
            self.negotiator.schedule_close(peer)
        if step.await_offer is not None:
            self.timers.await_offer(peer, step.await_offer, lambda: self._offer_awaited(peer))

    def _offer_awaited(self, peer: PeerId) -> None:
        if self.machine.offer_awaited(peer):
            log.info("no offer from %s within %g s: offering ourselves", peer, mesh.OFFER_WAIT)
            self.negotiator.schedule_offer(peer)

    def _peer_left(self, peer: PeerId) -> None:
        step = self.machine.peer_left(peer)
        self._emit_all(step.events)
        if step.forget:
            # Its connection was already closed, not forgotten: the sinks forget it now.
            self.work.schedule(peer, lambda: self.sinks.peer_closed(peer, gone=True), "forget")
            self.data.forget(peer)  # what waited for a connection to it is dropped
        if step.close:
            self.negotiator.schedule_close(peer)
        elif step.grace:
            self.timers.hold(peer, self.grace(), lambda: self._grace_over(peer))

    def _grace_over(self, peer: PeerId) -> None:
        if self.machine.grace_over(peer):
            self.negotiator.schedule_close(peer)
