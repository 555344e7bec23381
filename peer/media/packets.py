"""Encoded frames of remote tracks, as aiortc depacketized them, for consumers that want the
bytes and not the pictures (a recorder writing packets to file, a first-frame report).

Decoding a 640x480@30 video costs a receiver about 5% of a core; a bot that records or
only sends never needs the pictures. So every remote track hands its encoded frames to
the agent's :class:`peer.media.tap.Sinks`, and aiortc's decoder is fed only while some
consumer wants decoded frames (:class:`Want`).

The consumer's side, in order, for each remote track (the same :class:`RemoteTrack`
object as :class:`peer.media.tap.FrameConsumer` gets):

1. ``track_started(track)``: when the track arrives, or when the consumer is added to the
   agent's sinks (``agent.sinks.add(consumer)``) while it is live.
2. ``put_packet(track, packet)``: each :class:`EncodedFrame`, on the event loop, in
   arrival order (the jitter buffer's order: RTP timestamp order). For video, the first
   one a consumer gets of a track is a keyframe (the agent asks the sender for one with a
   PLI when needed), and after a loss the jitter buffer could not repair (it dropped
   frames and asked for a keyframe itself) the consumer gets nothing of that track until
   the next keyframe. Must return at once (bounded queue; drop, never block).
3. ``track_ended(track)``: no more packets will come.

``expect(peer, kinds)`` and ``peer_closed(peer, gone=...)`` come as for frame consumers.
A consumer may subclass :class:`PacketConsumer` for no-op defaults of all but
``put_packet`` and ``track_ended``. A consumer that has both ``put_frame`` and
``put_packet`` gets both; its ``wants`` attribute (:class:`Want`, read when it is added)
says which it gets when it should not be both.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from peer.events import Kind, RemoteTrack
from signaling.protocol import PeerId


class Want(enum.Flag):
    """What a consumer takes from a remote track: decoded frames (``put_frame``; aiortc
    decodes the track while any consumer wants them) and/or encoded ones (``put_packet``).

    Without a ``wants`` attribute a consumer wants what it has methods for.
    """

    FRAMES = enum.auto()
    PACKETS = enum.auto()


#: What a frame consumer without a ``frame_kinds`` attribute is decoded for: both kinds.
ALL_KINDS: frozenset[Kind] = frozenset({"audio", "video"})


def frame_kinds_of(consumer: object) -> frozenset[Kind]:
    """The kinds whose decoded frames ``consumer`` uses: its ``frame_kinds`` attribute,
    else both. A track of another kind is not decoded for it (a speaker or an audio reader
    must not make the agent decode every picture)."""
    kinds = getattr(consumer, "frame_kinds", None)
    return frozenset(kinds) if kinds is not None else ALL_KINDS


def wants_of(consumer: object) -> Want:
    """What ``consumer`` takes: its ``wants`` attribute, else what it has methods for."""
    wants = getattr(consumer, "wants", None)
    if isinstance(wants, Want):
        return wants
    found = Want(0)
    if callable(getattr(consumer, "put_frame", None)):
        found |= Want.FRAMES
    if callable(getattr(consumer, "put_packet", None)):
        found |= Want.PACKETS
    return found


@dataclass(frozen=True)
class EncodedFrame:
    """One whole encoded frame of a remote track, as the sender's encoder produced it.

    ``data`` is the depacketized frame: a VP8 frame (payload descriptor removed), an H.264
    access unit in Annex B form (start codes, SPS/PPS in front of an IDR), or one Opus
    packet. ``timestamp`` is in ``clock_rate`` units (90000 for video, 48000 for Opus):
    the RTP timestamp as aiortc maps it, 0 at the receiver's first frame of the track and
    never wrapping (a Python int). ``keyframe``: decodable alone (VP8: the frame header's
    key bit; H.264: an IDR NAL unit present; Opus: always). ``arrival``: when the frame
    was complete (``time.monotonic()``).
    """

    codec: str  # "VP8", "H264", "opus" (aiortc's codec name)
    data: bytes
    timestamp: int
    clock_rate: int
    keyframe: bool
    arrival: float

    @property
    def seconds(self) -> float:
        """``timestamp`` in seconds."""
        return self.timestamp / self.clock_rate


class TrackHooks(Protocol):
    """What every consumer of remote tracks is told, frame or packet consumer alike; all
    but ``track_ended`` have no-op defaults, for a subclass."""

    def track_ended(self, track: RemoteTrack) -> None:
        """Nothing more will come from ``track``."""

    def track_started(self, track: RemoteTrack) -> None:
        """Frames of ``track`` may come from now on (the first video packet a keyframe)."""
        return None

    def expect(self, peer: PeerId, kinds: set[Kind]) -> None:
        """A connection to ``peer`` was negotiated: these are the kinds it will send."""
        return None

    async def peer_closed(self, peer: PeerId, *, gone: bool) -> None:
        """The connection to ``peer`` closed (its tracks ended first): finish what belongs to
        that connection. ``gone``: the peer is forgotten too (it left the room, or we did),
        not about to be connected again, so drop what is kept across its connections. Also
        called (``gone``) for a peer that leaves while no connection to it is open."""
        return None


class PacketConsumer(TrackHooks, Protocol):
    """A sink of remote encoded frames (see the module's docstring for the order of calls)."""

    def put_packet(self, track: RemoteTrack, packet: EncodedFrame) -> None:
        """Called on the event loop for each encoded frame; must never block."""


def is_keyframe(codec: str, data: bytes) -> bool:
    """Whether an encoded frame of ``codec`` decodes alone (audio frames always do)."""
    name = codec.upper()
    if name == "VP8":
        # RFC 6386 9.1: bit 0 of the frame tag is 0 for a key frame.
        return bool(data) and not data[0] & 0x01
    if name == "H264":
        return _h264_has_idr(data)
    return True


def _h264_has_idr(data: bytes) -> bool:
    """An IDR NAL unit (type 5) in an Annex B access unit."""
    start = data.find(b"\x00\x00\x01")
    while start != -1 and start + 3 < len(data):
        if data[start + 3] & 0x1F == 5:
            return True
        start = data.find(b"\x00\x00\x01", start + 3)
    return False
