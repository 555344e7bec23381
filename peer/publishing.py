"""What the agent sends: one :class:`peer.media.fanout.Publisher` per local source, made
when joining, one per track given to ``publish`` (sent to every connection, present and
future, until ``unpublish``), and one per track given to ``send_track``/``add_track``,
each encoded once for every connection it goes to (with the shared encoding).

Apart from the agent so that the room (:mod:`peer.room`) and the connections
(:mod:`peer.negotiation`) only ask it for tracks, and the publishers' lifetimes are in
one place: the local ones live from join to leave, the others until nobody sends them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiortc import MediaStreamTrack

from peer.errors import MeshpeerError
from peer.events import Kind
from peer.media.encoder_group import EncoderStats
from peer.media.encoders import Vp8Settings
from peer.media.fanout import Encoding, Publisher
from peer.media.muting import MutableTrack

if TYPE_CHECKING:
    from peer.media.sources import LocalMedia


class Publishing:
    def __init__(self, encoding: Encoding, vp8: Vp8Settings | None) -> None:
        self.encoding = encoding
        self.vp8 = vp8
        #: The local sources, relayed to each new connection (set when joining).
        self._local: list[Publisher] = []
        #: Tracks given to publish/send_track/add_track, each encoded once for the peers it
        #: goes to; dropped once idle unless published.
        self._sent: dict[MediaStreamTrack, Publisher] = {}
        #: The published sources, in the order given: every connection sends each of them.
        self._published: dict[MediaStreamTrack, Publisher] = {}
        #: The local sources as sent: silence or black in place of what is muted.
        self._gates: dict[MediaStreamTrack, MutableTrack] = {}
        self._muted: set[Kind] = set()

    def start(self, media: LocalMedia | None) -> None:
        """(Re)make the local publishers: on joining."""
        for publisher in self._local:
            publisher.close()
        self._local = []
        if media is not None:
            for track in (media.video, media.audio):
                if track is not None:
                    gate = self._gates.get(track)
                    if gate is None:
                        gate = self._gates[track] = MutableTrack(track)
                    gate.muted = track.kind in self._muted
                    self._local.append(Publisher(gate, self.encoding, vp8=self.vp8))

    def mute(self, kind: Kind, muted: bool) -> None:
        """Send silence (audio) or black (video) in place of our own ``kind`` source, or
        the source again: at once, on every connection, without renegotiating."""
        if muted:
            self._muted.add(kind)
        else:
            self._muted.discard(kind)
        for gate in self._gates.values():
            if gate.kind == kind:
                gate.muted = muted

    @property
    def muted(self) -> frozenset[Kind]:
        """The kinds of our own sources sent as silence or black."""
        return frozenset(self._muted)

    def local_tracks(self) -> list[MediaStreamTrack]:
        """What a new connection sends: a copy of each local source."""
        return [publisher.track() for publisher in self._local]

    def local(self, kind: Kind, media: LocalMedia | None) -> MediaStreamTrack | None:
        """A copy of our own ``kind`` track, None if we send none."""
        sends = media is not None and (media.video is not None or media.audio is not None)
        if sends and not self._local:
            raise MeshpeerError("the local tracks are relayed once the agent has joined")
        for publisher in self._local:
            if publisher.kind == kind:
                return publisher.frames()
        return None

    def sent(self, track: MediaStreamTrack) -> Publisher:
        """``track``'s publisher (made at first use): ``track()`` gives a copy for one more
        connection, its encoder shared with the others; it goes once none is left."""
        publisher = self._sent.get(track)
        if publisher is None:
            publisher = Publisher(track, self.encoding, vp8=self.vp8, on_idle=self._idle)
            self._sent[track] = publisher
        return publisher

    def publish(self, track: MediaStreamTrack) -> bool:
        """Send ``track`` to every connection from now on; False if it already is."""
        if track in self._published:
            return False
        self._published[track] = self.sent(track)
        return True

    def unpublish(self, track: MediaStreamTrack) -> None:
        """Stop offering ``track`` to connections; its publisher goes once none sends it.

        Raises ValueError for a track that is not published."""
        publisher = self._published.pop(track, None)
        if publisher is None:
            raise ValueError(f"track {track.id} ({track.kind}) is not published")
        if publisher.idle:  # no connection encodes it: no group will report idle
            self._idle(publisher)

    def published(self) -> dict[MediaStreamTrack, Publisher]:
        """The published sources (a copy): what every connection sends besides the local."""
        return dict(self._published)

    def _idle(self, publisher: Publisher) -> None:
        source = publisher.source
        if self._sent.get(source) is publisher and source not in self._published:
            del self._sent[source]

    def stats(self) -> list[EncoderStats]:
        """The shared encoders running now, one per source and codec."""
        publishers = [*self._local, *self._sent.values()]
        return [stats for publisher in publishers for stats in publisher.stats()]

    def close(self) -> None:
        for publisher in [*self._local, *self._sent.values()]:
            publisher.close()
