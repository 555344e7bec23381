"""Negotiation glue: one :class:`peer.link.PeerLink` per remote peer, made, answered,
re-offered and closed as the room machine (:class:`peer.machine.RoomMachine`) decides, with
the ICE servers that answered.

Every method that touches a peer's connection runs as that peer's serial work
(:mod:`peer.serial`), so two steps for one peer never overlap. What the room looks like
(members) and when to hang up after ``peer-left`` is the agent's business; this module
only carries out offers, answers, candidates and closes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, assert_never

from aiortc import MediaStreamTrack

import peer.events as ev
import peer.mesh as mesh
import peer.renegotiation as renegotiation
from peer.dataplane import DataPlane
from peer.events import Event, Kind, RemoteTrack
from peer.ice import IceServer, arrange, rtc_configuration
from peer.ice_probe import Check, IceProbe, Verdict
from peer.link import PeerLink
from peer.machine import RoomMachine
from peer.mesh import AnswerUse, CandidateUse, LinkState, OfferReply, Role
from peer.serial import PeerWork
from peer.stats import Sampler
from peer.timers import PeerTimers
from signaling.protocol import Answer, Candidate, Message, Offer, PeerId

if TYPE_CHECKING:
    from peer.media.tap import Sinks
    from peer.publishing import Publishing

log = logging.getLogger(__name__)

Send = Callable[[Message], Awaitable[bool]]


class Negotiator:
    """The connections of ``me`` to the other members of its ``room``: each one is the
    ``link`` of that peer's record, its failures counted there too.

    ``publishing`` gives a new connection what it sends (a copy of each local source, and
    of each published one); :meth:`sync_published` brings a live connection in line with
    what is published. ``data`` and ``sinks`` are told when a connection comes and goes.
    """

    def __init__(
        self,
        me: PeerId,
        *,
        machine: RoomMachine,
        send: Send,
        emit: Callable[[Event], None],
        work: PeerWork,
        timers: PeerTimers,
        sinks: Sinks,
        data: DataPlane,
        publishing: Publishing,
        own_servers: Sequence[IceServer] = (),
        always_send: bool = False,
        receive: bool = True,
    ) -> None:
        self.me = me
        self._machine = machine
        self._room = machine.room
        self._publishing = publishing
        self._send = send
        self._emit = emit
        self._work = work
        self._timers = timers
        self._sinks = sinks
        self._always_send = always_send
        self._receive = receive
        self._own_servers = tuple(own_servers)
        #: From the latest peer-list or ice-servers: the server's, with our TURN credentials.
        self._handed_servers: tuple[IceServer, ...] = ()
        #: Connections use only servers that answered a check (never wait on a dead one).
        self._probe = IceProbe(self._ice_verdict)
        self._data = data

    @property
    def ice_servers(self) -> tuple[IceServer, ...]:
        """Ours, then the server's: what new connections may use once checked."""
        return self._own_servers + self._handed_servers

    # -- ICE servers -------------------------------------------------------------------
    def check_own_servers(self) -> None:
        self._probe.check(self._own_servers)

    def hand_servers(self, servers: tuple[IceServer, ...]) -> None:
        """The server's list (peer-list, ice-servers): used from now on, once checked."""
        self._handed_servers = servers
        self._probe.check(servers)

    async def close(self) -> None:
        await self._probe.close()

    def _ice_verdict(self, server: IceServer, check: Check) -> None:
        """A server check ended: report a bad one; offer again where a good one was missing."""
        if check.verdict is not Verdict.OK:
            log.warning("ICE server %s: %s; connections go without it", server.url, check.detail)
            self._emit(ev.IceServerProblem(server.url, check.detail))
            return
        log.info("ICE server %s answered", server.url)
        for peer, link in self._room.links.items():
            # Connections made while the check ran lack this server (a TURN relay may be the
            # only way through): the side that offered them offers again, now with it.
            if (
                link.role is not Role.OFFERER
                or link.state is LinkState.CONNECTED
                or server.url in link.ice_urls  # fresh credentials for a URL it has: keep it
            ):
                continue
            if link.state is LinkState.OFFERING:
                # Its answer is on the way, and answers name no offer: a new offer now would
                # take the old offer's answer. Apply that answer first, then offer again.
                link.reoffer_when_answered = True
            else:
                self.schedule_offer(peer)

    # -- scheduling ----------------------------------------------------------------------
    def schedule_offer(self, peer: PeerId) -> bool:
        return self._work.schedule(peer, lambda: self.offer(peer), "offer")

    def schedule_close(self, peer: PeerId, *, only: PeerLink | None = None) -> bool:
        return self._work.schedule(peer, lambda: self.close_link(peer, only=only), "close")

    def on_signal(self, message: Offer | Answer | Candidate) -> None:
        """An offer, answer or candidate from the room: handled in that peer's order."""
        sender = message.sender
        if sender is None or sender == self.me:
            return
        if isinstance(message, Offer):
            self._work.schedule(sender, lambda: self.answer(sender, message.sdp), "answer")
        elif isinstance(message, Answer):
            self._work.schedule(sender, lambda: self.apply_answer(sender, message.sdp), "apply")
        else:
            self._work.schedule(sender, lambda: self.candidate(sender, message), "candidate")

    # -- negotiation (each runs as the peer's serial work) -------------------------------
    def _new_link(self, peer: PeerId, role: Role) -> PeerLink:
        tracks = self._publishing.local_tracks()
        published = {
            source: publisher.track() for source, publisher in self._publishing.published().items()
        }
        known = self.ice_servers
        self._probe.check(known)  # those that failed a while ago get another chance
        record = self._room[peer]
        servers = arrange(self._probe.usable(known), record.failures)
        link = PeerLink(
            peer,
            role,
            rtc_configuration(servers),
            tracks,
            self._sinks,
            on_state=self._link_state,
            on_track=self._link_track,
            always_send=self._always_send,
            receive=self._receive,
            ice_servers=servers,
            on_track_ended=self._link_track_ended,
            on_channel=self._data.added,
            published=published,
        )
        record.link = link
        record.sampler = Sampler()
        return link

    async def offer(self, peer: PeerId) -> None:
        if not self._room.is_member(peer):
            return
        await self.close_link(peer, forget=False)
        link = self._new_link(peer, Role.OFFERER)
        sdp = await link.make_offer()
        if self._room.link(peer) is not link:
            return
        await self._send(Offer("offer", self.me, peer, sdp=sdp))

    async def answer(self, peer: PeerId, sdp: str) -> None:
        link = self._room.link(peer)
        origin = renegotiation.origin(link.remote_sdp if link is not None else None, sdp)
        reply = self._machine.offer(peer, origin)
        match reply:
            case OfferReply.IGNORE:
                log.info("glare with %s: we are not polite, ignoring its offer", peer)
                return
            case OfferReply.RENEGOTIATE | OfferReply.OFFER:
                if (
                    reply is OfferReply.RENEGOTIATE
                    and link is not None
                    and await self._renegotiate(peer, link, sdp)
                ):
                    return
                # aiortc has no ICE restart and no rollback: a new connection it is, offered
                # at once (no backoff); the other side takes it over its own offer.
                log.warning(
                    "%s renegotiated its connection (%s) in a way aiortc cannot apply in "
                    "place: replacing the connection",
                    peer,
                    origin,
                )
                await self.offer(peer)
                return
            case OfferReply.ANSWER:
                pass
            case _:
                assert_never(reply)
        if link is not None:
            if link.state is LinkState.OFFERING:
                log.info("glare with %s: we are polite, dropping our offer", peer)
            elif link.state in mesh.LIVE:
                log.info("%s started a new connection: replacing ours", peer)
            await self.close_link(peer, forget=False)
        link = self._new_link(peer, Role.ANSWERER)
        try:
            answer = await link.accept_offer(sdp)
        except Exception as exc:  # a malformed offer must not take the agent down
            log.warning("cannot answer the offer of %s: %s", peer, exc)
            await self.close_link(peer, forget=False)
            return
        self._expect(peer, link)
        await self._send(Answer("answer", self.me, peer, sdp=answer))
        await self.sync_published(peer)  # what the offer had no m-line for

    async def _renegotiate(self, peer: PeerId, link: PeerLink, sdp: str) -> bool:
        """Apply ``peer``'s new offer to the connection we hold; False if aiortc refused it."""
        try:
            answer = await link.renegotiate(sdp)
        except Exception as exc:
            log.warning("cannot renegotiate with %s in place: %r", peer, exc)
            return False
        log.info("renegotiated the connection to %s in place", peer)
        self._expect(peer, link)
        await self._send(Answer("answer", self.me, peer, sdp=answer))
        await self.sync_published(peer)  # published while its offer was on the way
        return True

    async def add_track(self, peer: PeerId, track: MediaStreamTrack) -> bool:
        """Send ``track`` to ``peer`` as one more track: renegotiates the live connection in
        place. False when there is none (or one of our offers is out on it)."""
        link = self._room.link(peer)
        if link is None or link.state not in mesh.LIVE or link.offer_out:
            return False
        sdp = await link.add_track(track)
        if self._room.link(peer) is not link:  # pragma: no cover - serial work: not replaced
            return False
        await self._send(Offer("offer", self.me, peer, sdp=sdp))
        return True

    async def apply_answer(self, peer: PeerId, sdp: str) -> None:
        link = self._room.link(peer)
        origin = renegotiation.origin(link.remote_sdp if link is not None else None, sdp)
        use = self._machine.answer(peer, origin)
        match use:
            case AnswerUse.OFFER:
                log.warning(
                    "%s answered our renegotiation from another connection: replacing", peer
                )
                await self.offer(peer)
                return
            case AnswerUse.IGNORE:
                log.debug("stale answer from %s ignored", peer)
                return
            case AnswerUse.APPLY:
                pass
            case _:
                assert_never(use)
        if link is None:  # pragma: no cover - on_answer applies only to an existing link
            return
        try:
            await link.accept_answer(sdp)
        except Exception as exc:
            log.warning("cannot apply the answer of %s: %s", peer, exc)
            return
        self._expect(peer, link)
        if link.reoffer_when_answered:
            self.schedule_offer(peer)
        else:
            await self.sync_published(peer)  # (un)published while our offer was out

    def sync_all(self) -> None:
        """Bring every connection in line with what is published, each as its peer's
        serial work (a negotiation under way finishes first)."""
        for peer in self._room.links:
            self._work.schedule(peer, partial(self.sync_published, peer), "publish")

    async def sync_published(self, peer: PeerId) -> None:
        """Make ``peer``'s live connection send exactly the published tracks: add the
        missing ones, stop the unpublished, and offer the change in place.

        Nothing to do without a live connection (the next one is made with them), and
        nothing yet while an offer of ours is out (done again once it is answered).
        """
        link = self._room.link(peer)
        if link is None or link.state not in mesh.LIVE or link.offer_out:
            return
        wanted = self._publishing.published()
        gone = [source for source in link.published if source not in wanted]
        for source in gone:
            link.unpublish(source)
        missing = [source for source in wanted if source not in link.published]
        for source in missing:
            link.publish(source, wanted[source].track())
        if not gone and not missing:
            return
        log.info("offering %s the published tracks (+%d -%d)", peer, len(missing), len(gone))
        sdp = await link.make_offer()
        if self._room.link(peer) is link:
            await self._send(Offer("offer", self.me, peer, sdp=sdp))

    async def candidate(self, peer: PeerId, message: Candidate) -> None:
        link = self._room.link(peer)
        use = self._machine.candidate(peer)
        if use is CandidateUse.IGNORE or link is None:
            log.debug("candidate from %s without a connection ignored", peer)
        elif use is CandidateUse.QUEUE:
            link.queue_candidate(message.candidate)
        elif use is CandidateUse.APPLY:
            await link.add_candidate(message.candidate)
        else:
            assert_never(use)

    async def close_link(
        self, peer: PeerId, *, forget: bool = True, only: PeerLink | None = None
    ) -> None:
        """Close ``peer``'s connection (if it is still ``only``) and release its media."""
        record = self._room.get(peer)
        link = record.link if record is not None else None
        if record is None or link is None or (only is not None and link is not only):
            return
        record.link = None
        self._data.link_closed(link)  # its queued data waits for the next connection
        await link.close()
        await self._sinks.peer_closed(peer, gone=forget)
        self._emit(ev.ConnectionStateChanged(peer, LinkState.CLOSED))
        if forget:
            self._timers.forget(peer)
            record.failures = 0
            if not record.member:
                self._data.forget(peer)
        self._room.tidy(peer)

    async def close_all(self) -> None:
        for peer in self._room.links:
            await self.close_link(peer)
        self._data.close()

    def _expect(self, peer: PeerId, link: PeerLink) -> None:
        if link.received.kinds:
            self._sinks.expect(peer, link.received.kinds)

    # -- link callbacks ------------------------------------------------------------------
    def _link_track(self, link: PeerLink, track: RemoteTrack) -> None:
        self._emit(ev.TrackReceived(link.remote, track.kind, track))

    def _link_track_ended(self, link: PeerLink, kind: Kind, track: MediaStreamTrack) -> None:
        if self._room.link(link.remote) is link:
            self._emit(ev.TrackEnded(link.remote, kind, link.received.track_id(track)))

    def _link_state(self, link: PeerLink) -> None:
        peer = link.remote
        step = self._machine.link_state(link)
        if step is None:
            return
        for event in step.events:
            self._emit(event)
        if step.close:
            self.schedule_close(peer, only=link)
        elif step.await_reoffer:
            log.info("connection to %s %s: waiting for its new offer", peer, link.state)
            self._work.schedule(
                peer, lambda: self.close_link(peer, forget=False, only=link), "close"
            )
        elif step.reoffer:

            async def reoffer() -> None:
                if self._room.link(peer) is link:  # not replaced by an offer meanwhile
                    await self.offer(peer)

            delay = self._timers.reoffer_later(
                peer, lambda: self._work.schedule(peer, reoffer, "reoffer")
            )
            log.info("connection to %s %s: offering again in %.2f s", peer, link.state, delay)
