"""The remote tracks of one connection: each one's relay, tap, encoded frames and NACK
repeater, from aiortc's ``track`` event until the remote stops sending it or the link closes.

:class:`peer.link.PeerLink` owns one :class:`ReceivedTracks` (``link.received``) and keeps
the connection itself (descriptions, candidates, the tracks it sends); what arrives on it
is all here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.contrib.media import MediaRelay

from peer.events import Kind, RemoteTrack
from peer.media.encoded import EncodedTap
from peer.media.tap import Sinks, TrackTap
from peer.nack import NackRepeater
from peer.renegotiation import track_ids
from signaling.protocol import PeerId

log = logging.getLogger(__name__)


class ReceivedTracks:
    """Every remote track of ``pc`` (from ``remote``), read through a :class:`TrackTap` to
    ``sinks``; ``on_track`` hears of each new one."""

    def __init__(
        self,
        remote: PeerId,
        pc: RTCPeerConnection,
        sinks: Sinks,
        *,
        on_track: Callable[[RemoteTrack], None],
    ) -> None:
        self.remote = remote
        self._pc = pc
        self._sinks = sinks
        self._on_track = on_track
        #: Told of each track the remote stopped sending (before its ID is forgotten).
        self.on_ended: Callable[[Kind, MediaStreamTrack], None] | None = None
        self.taps: list[TrackTap] = []
        self._repeaters: list[NackRepeater] = []
        #: The first live remote track of each kind (the one ``subscribe(kind)`` copies).
        self.relays: dict[Kind, tuple[MediaRelay, MediaStreamTrack]] = {}
        #: Every remote track being read, and its tap (further tracks of a kind included).
        self._received: dict[MediaStreamTrack, TrackTap] = {}
        #: Each remote track's encoded frames (to the packet consumers; decoded on demand).
        self.encoded: dict[MediaStreamTrack, EncodedTap] = {}
        #: The sender's ID of each remote track (from the description that brought it).
        self._track_ids: dict[MediaStreamTrack, str] = {}
        #: The remote description being applied (set by the link): its tracks' IDs.
        self.applying = ""

    @property
    def kinds(self) -> set[Kind]:
        """The kinds with a live remote track."""
        return set(self.relays)

    def track(self, track: MediaStreamTrack) -> None:
        """aiortc's ``track`` event: read ``track`` and hand it to the consumers."""
        kind: Kind = "video" if track.kind == "video" else "audio"
        relay = MediaRelay()
        if kind not in self.relays:
            self.relays[kind] = (relay, track)
        receiver = None
        for transceiver in self._pc.getTransceivers():
            if transceiver.receiver.track is track:
                receiver = transceiver.receiver
                mid = transceiver.mid or ""
                self._track_ids[track] = track_ids(self.applying).get(mid, track.id)
                if kind == "video":
                    self._repeaters.append(NackRepeater(transceiver.receiver))
        remote = RemoteTrack(
            self.remote,
            kind,
            lambda: self._copy(relay, track),
            self.track_id(track),
            self._free_index(kind),
            keyframe=lambda: self._request_keyframe(track),
        )
        encoded = None
        if receiver is not None:  # its frames come encoded; decoded only on demand
            encoded = self.encoded[track] = EncodedTap(remote, receiver, self._sinks)
        # Every track goes to the consumers; a further one of a kind (a second camera, a
        # shared screen) has index > 0, for those that keep one per peer and kind.
        log.info("%r received", remote)
        # The tap's own copy, not a reader's. Audio is read whole (the relay queues for the
        # tap, which drains it whenever the loop runs): speech work needs every block.
        copy = relay.subscribe(track, buffered=kind == "audio")
        tap = TrackTap(remote, copy, self._sinks, received=encoded)
        tap.start()
        self.taps.append(tap)
        self._received[track] = tap
        self._on_track(remote)

    def _copy(self, relay: MediaRelay, track: MediaStreamTrack) -> MediaStreamTrack:
        """A copy of the decoded ``track`` for a reader of its own (decoded while read)."""
        copy: MediaStreamTrack = relay.subscribe(track, buffered=False)
        encoded = self.encoded.get(track)
        return encoded.reader(copy) if encoded is not None else copy

    def _request_keyframe(self, track: MediaStreamTrack) -> None:
        encoded = self.encoded.get(track)
        if encoded is not None:
            encoded.request_keyframe()

    def _free_index(self, kind: Kind) -> int:
        """The lowest :attr:`RemoteTrack.index` no live ``kind`` track of this link holds."""
        taken = {tap.remote.index for tap in self._received.values() if tap.kind == kind}
        return next(i for i in range(len(taken) + 1) if i not in taken)

    def track_id(self, track: MediaStreamTrack) -> str:
        """``track``'s ID as its sender named it (the remote browser's track.id)."""
        return self._track_ids.get(track, track.id)

    async def end_stopped(self) -> None:
        """End the remote tracks whose m-line no longer receives (the remote removed them).

        aiortc only stops feeding such a track, so its readers would wait forever: the
        receiver is stopped (its track ends, and every copy with it) and our side of the
        m-line stops receiving for good, so a later offer cannot revive a stopped receiver.
        """
        for transceiver in self._pc.getTransceivers():
            track = transceiver.receiver.track
            tap = self._received.get(track) if track is not None else None
            if tap is None or transceiver.currentDirection in ("sendrecv", "recvonly"):
                continue
            kind = tap.kind
            log.info("%s stopped sending %s track %s", self.remote, kind, self.track_id(track))
            del self._received[track]
            self.taps.remove(tap)
            encoded = self.encoded.pop(track, None)
            if encoded is not None:
                encoded.stop()
            if self.relays.get(kind, (None, None))[1] is track:
                del self.relays[kind]  # the next track of this kind goes to the consumers
            sending = transceiver.direction in ("sendrecv", "sendonly")
            transceiver.direction = "sendonly" if sending else "inactive"
            for repeater in [r for r in self._repeaters if r.receiver is transceiver.receiver]:
                repeater.stop()
                self._repeaters.remove(repeater)
            await transceiver.receiver.stop()
            await tap.stop()
            if self.on_ended is not None:
                self.on_ended(kind, track)
            self._track_ids.pop(track, None)

    def subscribe(self, kind: Kind) -> MediaStreamTrack | None:
        """A new unbuffered copy of the remote ``kind`` track, or None if none was received."""
        entry = self.relays.get(kind)
        if entry is None:
            return None
        relay, track = entry
        return self._copy(relay, track)

    def tap(self, kind: Kind) -> TrackTap | None:
        """The first tap of a ``kind`` track (the first-frame time and the stats read it)."""
        for tap in self.taps:
            if tap.kind == kind:
                return tap
        return None

    async def stop(self) -> None:
        """Stop reading every remote track (after the connection closed)."""
        for repeater in self._repeaters:
            repeater.stop()
        for encoded in self.encoded.values():
            encoded.stop()
        for tap in self.taps:
            await tap.stop()
