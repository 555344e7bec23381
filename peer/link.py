"""One RTCPeerConnection to one remote peer: its descriptions, candidates and sent tracks.

The aiortc glue of the agent: it makes and takes descriptions, queues candidates that
arrive before the remote description (aiortc would drop them silently), sends our tracks
and releases all of it on :meth:`PeerLink.close`. What arrives on it (remote tracks, their
taps) is :class:`peer.received.ReceivedTracks`, its ``received``. It decides nothing:
:mod:`peer.mesh` does, in :mod:`peer.agent`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from peer._aiortc import lighten_receive_path, mdns_on_this_loop
from peer.candidates import (
    CandidateBudget,
    CandidateError,
    Refusal,
    is_mdns,
    parse_remote_candidate,
)
from peer.datachannel import MESHPEER
from peer.events import Kind, RemoteTrack
from peer.media.encoded import EncodedTap
from peer.media.fanout import EncodedTrack
from peer.media.tap import Sinks, TrackTap
from peer.mesh import LinkState, Role
from peer.received import ReceivedTracks
from peer.renegotiation import reoffer
from signaling.ice import IceServer
from signaling.protocol import IceCandidate, PeerId

log = logging.getLogger(__name__)

_PC_STATES = {
    "connecting": LinkState.CONNECTING,
    "connected": LinkState.CONNECTED,
    "failed": LinkState.FAILED,
    "closed": LinkState.CLOSED,
}


class PeerLink:
    """The connection to ``remote``; ``local_tracks`` are sent (each one a relay subscription),
    and ``published`` (source -> the copy this connection sends) after them."""

    def __init__(
        self,
        remote: PeerId,
        role: Role,
        config: RTCConfiguration,
        local_tracks: Sequence[MediaStreamTrack],
        sinks: Sinks,
        *,
        on_state: Callable[[PeerLink], None],
        on_track: Callable[[PeerLink, RemoteTrack], None],
        always_send: bool = False,
        receive: bool = True,
        ice_servers: Sequence[IceServer] = (),
        on_track_ended: Callable[[PeerLink, Kind, MediaStreamTrack], None] | None = None,
        on_channel: Callable[[PeerLink, RTCDataChannel], None] | None = None,
        published: Mapping[MediaStreamTrack, MediaStreamTrack] | None = None,
    ) -> None:
        self.remote = remote
        self.role = role
        self.state = LinkState.OFFERING if role is Role.OFFERER else LinkState.ANSWERING
        self.created_at = time.monotonic()
        self.connected_at: float | None = None
        #: When each negotiation step finished (time.monotonic()), for the timing breakdown.
        self.steps: dict[str, float] = {"created": self.created_at}
        lighten_receive_path()
        self.pc = RTCPeerConnection(configuration=config)
        #: What arrives: the remote tracks, their taps and copies.
        self.received = ReceivedTracks(remote, self.pc, sinks, on_track=lambda t: on_track(self, t))
        if on_track_ended is not None:
            self.received.on_ended = lambda kind, track: on_track_ended(self, kind, track)
        #: Candidates taken before the remote description (aiortc would drop them).
        self._pending: list[RTCIceCandidate | None] = []
        self._resolving: set[asyncio.Task[None]] = set()
        self._budget = CandidateBudget()
        self._refused: set[Refusal] = set()  # each reason is logged once per link
        self._on_state = on_state
        self._closed = False
        self._sent_tracks = list(local_tracks)
        #: The published sources this connection sends, each as its own copy (an m-line).
        self.published: dict[MediaStreamTrack, MediaStreamTrack] = {}
        offered = dict(published or {})
        self._always_send = always_send
        #: False: a send-only peer; every m-line sends or is inactive, so no one sends us
        #: media (their uplink and our receiving are spared).
        self.receive = receive
        #: The STUN/TURN URLs in ``config``: a server that answers later is not in here.
        self.ice_urls = frozenset(server.url for server in ice_servers)
        #: Offer again once the answer on its way has been applied (a server answered late).
        self.reoffer_when_answered = False
        if role is Role.OFFERER:
            # Offer both kinds: what we have sendrecv, the rest recvonly (a receive-only bot
            # still gets everyone's media); a send-only peer offers only what it sends.
            kinds = {track.kind for track in [*local_tracks, *offered.values()]}
            for track in local_tracks:
                self._add_track(track)
            for source, copy in offered.items():
                self.publish(source, copy)
            offered = {}
            for kind in ("audio", "video"):
                if kind not in kinds and (receive or always_send):
                    self.pc.addTransceiver(
                        kind, direction="sendrecv" if always_send else "recvonly"
                    )
        #: Published copies to place on the remote offer's m-lines (the answering side).
        self._to_place = offered
        self.pc.on("connectionstatechange", self._connection_state_changed)
        if receive:  # aiortc announces an offer's tracks even where our answer refuses them
            self.pc.on("track", self.received.track)
        if on_channel is not None:
            # PROTOCOL.md 16.1: the first offer carries the meshpeer channel (no extra round
            # trip); the answerer gets it, and any channel the remote opens, as "datachannel".
            self.pc.on("datachannel", lambda channel: on_channel(self, channel))
            if role is Role.OFFERER:
                on_channel(self, self.pc.createDataChannel(MESHPEER))

    @property
    def has_remote_description(self) -> bool:
        return self.pc.remoteDescription is not None

    @property
    def mdns_resolving(self) -> int:
        """``.local`` candidates of this link being resolved now."""
        return len(self._resolving)

    @property
    def candidates_dropped(self) -> int:
        """Remote candidates refused so far (see :mod:`peer.candidates`)."""
        return self._budget.dropped

    # What arrives, read through the link: ``received``'s (tests and tools read these).

    @property
    def taps(self) -> list[TrackTap]:
        return self.received.taps

    @property
    def relays(self) -> dict[Kind, tuple[MediaRelay, MediaStreamTrack]]:
        return self.received.relays

    @property
    def encoded(self) -> dict[MediaStreamTrack, EncodedTap]:
        return self.received.encoded

    def tap(self, kind: Kind) -> TrackTap | None:
        return self.received.tap(kind)

    @property
    def remote_sdp(self) -> str | None:
        """The remote description applied last (None before the first)."""
        description = self.pc.remoteDescription
        return str(description.sdp) if description is not None else None

    @property
    def offer_out(self) -> bool:
        """Our offer awaits its answer (a new connection's, or a renegotiation's)."""
        return bool(self.pc.signalingState == "have-local-offer")

    # -- negotiation -------------------------------------------------------------

    async def make_offer(self) -> str:
        """Our offer, with every local candidate in it (aiortc gathers before returning)."""
        self._send_only()
        offer = await self.pc.createOffer()
        if self.pc.remoteDescription is not None:  # a renegotiation: keep what was agreed
            local = self.pc.localDescription
            sdp = reoffer(offer.sdp, local.sdp if local else None, self.remote_sdp)
            offer = RTCSessionDescription(sdp=sdp, type="offer")
        await self.pc.setLocalDescription(offer)
        self._mark("local-description")
        return str(self.pc.localDescription.sdp)

    async def accept_offer(self, sdp: str) -> str:
        """Apply the remote offer and return our answer."""
        sdp = self.received.applying = self._trim(sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._mark("remote-description")
        self._attach_to_offer()
        await self._flush_candidates()
        self._send_only()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._mark("local-description")
        self._set_state(self._from_pc(LinkState.CONNECTING))
        return str(self.pc.localDescription.sdp)

    async def renegotiate(self, sdp: str) -> str:
        """Apply a new offer from the same remote connection in place; return our answer.

        Media on the tracks both keep flows on. A new m-line brings a new remote track (the
        ``track`` event); one the remote no longer sends ends (``received.end_stopped``).
        Our own tracks stay on their m-lines: none is added to the new ones.
        """
        sdp = self.received.applying = self._trim(sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._send_only()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.received.end_stopped()
        return str(self.pc.localDescription.sdp)

    async def add_track(self, track: MediaStreamTrack) -> str:
        """Send ``track`` too (a free slot of its kind, else a new m-line) and return the
        offer that renegotiates this connection in place."""
        self._add_track(track)
        self._sent_tracks.append(track)
        return await self.make_offer()

    def publish(self, source: MediaStreamTrack, copy: MediaStreamTrack) -> None:
        """Send ``copy`` of the published ``source`` too: on a free slot of its kind, else a
        new m-line. Takes effect with the next offer (:meth:`make_offer`)."""
        self._add_track(copy)
        self._sent_tracks.append(copy)
        self.published[source] = copy

    def unpublish(self, source: MediaStreamTrack) -> None:
        """Stop sending the published ``source``: its m-line stops sending at the next offer
        (the remote ends its track). The stopped copy stays on the sender, so the slot is
        never reused (aiortc's sender stops for good once its track ends)."""
        copy = self.published.pop(source)
        for transceiver in self.pc.getTransceivers():
            if transceiver.sender.track is copy:
                receiving = transceiver.direction in ("sendrecv", "recvonly")
                transceiver.direction = "recvonly" if receiving else "inactive"
        copy.stop()
        self._sent_tracks.remove(copy)

    def _attach_to_offer(self) -> None:
        """Send our tracks on the offer's m-lines of their kind; never add m-lines.

        aiortc cannot answer with a transceiver the offer did not have, so a track whose
        kind the offer lacks (say, audio to a video-only peer) is not sent; a published
        one is left out of ``published`` (stopped), for the next offer of ours to add.
        """
        offered = [t for t in self.pc.getTransceivers() if t.sender.track is None]
        for track in self._sent_tracks:
            slot = next((t for t in offered if t.kind == track.kind), None)
            if slot is None:
                log.info("%s offered no %s: not sending ours", self.remote, track.kind)
                continue
            offered.remove(slot)
            self._add_track(track)
        to_place, self._to_place = self._to_place, {}
        for source, copy in to_place.items():
            slot = next((t for t in offered if t.kind == copy.kind), None)
            if slot is None:
                copy.stop()
                continue
            offered.remove(slot)
            self.publish(source, copy)
        if self._always_send:
            for slot in offered:
                slot.direction = "sendrecv"  # a sender with no track yet: see send_track()

    def _send_only(self) -> None:
        """A send-only peer's m-lines, set before each offer or answer: sending ones send
        only, the rest are inactive (aiortc makes offered ones recvonly)."""
        if self.receive:
            return
        for transceiver in self.pc.getTransceivers():
            sending = transceiver.direction in ("sendrecv", "sendonly")
            transceiver.direction = "sendonly" if sending else "inactive"

    def _add_track(self, track: MediaStreamTrack) -> None:
        sender = self.pc.addTrack(track)
        if isinstance(track, EncodedTrack):  # it reads its codec and feedback from there
            track.attach(next(t for t in self.pc.getTransceivers() if t.sender is sender))

    def send_track(self, kind: Kind, track: MediaStreamTrack) -> bool:
        """Send ``track`` as our ``kind`` from now on, without renegotiating.

        Works where the connection has a sending slot of that kind: a local track, or
        ``always_send``. False when there is none.
        """
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == kind and transceiver.direction in ("sendrecv", "sendonly"):
                old = transceiver.sender.track
                transceiver.sender.replaceTrack(track)
                if isinstance(track, EncodedTrack):
                    track.attach(transceiver)
                self._sent_tracks.append(track)
                if old is not None and old is not track:
                    old.stop()
                return True
        return False

    async def accept_answer(self, sdp: str) -> None:
        sdp = self.received.applying = self._trim(sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._mark("remote-description")
        await self._flush_candidates()
        self._set_state(self._from_pc(LinkState.CONNECTING))
        await self.received.end_stopped()  # after a renegotiation of ours

    async def add_candidate(self, candidate: IceCandidate | None) -> None:
        """Apply a trickled candidate now: the remote description is set (what
        :func:`peer.mesh.on_candidate` answers with APPLY). Within the link's
        :class:`peer.candidates.CandidateBudget`: the rest is dropped."""
        for parsed in self._parse(candidate):
            await self._apply_candidate(parsed)

    def queue_candidate(self, candidate: IceCandidate | None) -> None:
        """Keep a trickled candidate until the remote description is set (QUEUE from
        :func:`peer.mesh.on_candidate`): aiortc would drop it. No more than the budget
        would take."""
        for parsed in self._parse(candidate):
            if parsed is None:
                if None not in self._pending:
                    self._pending.append(None)
            elif len(self._pending) < self._budget.limit:
                self._pending.append(parsed)
            else:
                self._refuse(self._budget.refuse(Refusal.TOO_MANY))

    def _parse(self, candidate: IceCandidate | None) -> list[RTCIceCandidate | None]:
        """``[candidate]`` as aiortc takes it (None: end of candidates), or ``[]`` for one
        that does not parse (logged)."""
        try:
            return [parse_remote_candidate(candidate) if candidate is not None else None]
        except CandidateError as exc:
            log.warning("ignoring candidate from %s: %s", self.remote, exc)
            return []

    async def _flush_candidates(self) -> None:
        pending, self._pending = self._pending, []
        for candidate in pending:
            await self._apply_candidate(candidate)

    async def _apply_candidate(self, candidate: RTCIceCandidate | None) -> None:
        if candidate is not None:
            refusal = self._budget.admit(candidate, len(self._resolving))
            if refusal is not None:
                self._refuse(refusal)
                return
            if is_mdns(candidate):
                # aioice resolves mDNS names inline, up to 1 s each: off the peer's queue.
                mdns_on_this_loop()
                task = asyncio.get_running_loop().create_task(self._add(candidate))
                self._resolving.add(task)
                task.add_done_callback(self._resolving.discard)
                return
        await self._add(candidate)

    def _refuse(self, refusal: Refusal) -> None:
        """Log a refused candidate: each reason once per link (a flood logs no flood)."""
        reason = self._budget.explain(refusal)
        if refusal in self._refused:
            log.debug("candidate from %s dropped: %s", self.remote, reason)
            return
        self._refused.add(refusal)
        log.warning("dropping candidates from %s: %s", self.remote, reason)

    def _trim(self, sdp: str) -> str:
        """The remote description without the candidates the budget refuses."""
        mdns_on_this_loop()  # aiortc resolves the description's .local names
        trimmed, refusals = self._budget.trim(sdp, len(self._resolving))
        for refusal in refusals:
            self._refuse(refusal)
        return trimmed

    async def _add(self, candidate: RTCIceCandidate | None) -> None:
        try:
            await self.pc.addIceCandidate(candidate)
        except ValueError as exc:  # e.g. after end-of-candidates
            log.debug("candidate from %s not added: %s", self.remote, exc)

    # -- events from aiortc ------------------------------------------------------

    def _from_pc(self, default: LinkState) -> LinkState:
        return _PC_STATES.get(self.pc.connectionState, default)

    def _mark(self, step: str) -> None:
        self.steps.setdefault(step, time.monotonic())

    def _connection_state_changed(self) -> None:
        state = _PC_STATES.get(self.pc.connectionState)
        if state is not None and not self._closed:
            self._set_state(state)

    def _set_state(self, state: LinkState) -> None:
        if state is self.state:
            return
        log.info("connection to %s: %s -> %s", self.remote, self.state, state)
        self.state = state
        if state is LinkState.CONNECTED and self.connected_at is None:
            self.connected_at = time.monotonic()
            self._mark("connected")
        self._on_state(self)

    # -- end ---------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection, stop its taps and the relay copies of our tracks."""
        if self._closed:
            return
        self._closed = True
        self.state = LinkState.CLOSED
        for task in list(self._resolving):
            task.cancel()
        try:
            # shielded: cancelling a second close() would cancel aiortc's own close future
            await asyncio.wait_for(asyncio.shield(self.pc.close()), 5.0)
        except Exception as exc:  # the taps and tracks below are released all the same
            log.warning("closing the connection to %s failed: %r", self.remote, exc)
        await self.received.stop()
        for track in self._sent_tracks:
            track.stop()
        self.pc.remove_all_listeners()
