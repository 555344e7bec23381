"""Encode a local source once and send the packets to every connection.

aiortc encodes every frame again for every RTCPeerConnection (its issue 449): one
640x480 camera sent to 8 peers costs 8 encodes. A ``Publisher`` holds one source; each
connection gets ``publisher.track()``. In the default, shared mode that is an
``EncodedTrack``: it yields ``av.Packet``s, which aiortc's sender packetizes without
encoding (``RTCRtpSender._next_encoded_frame``, the "pack" path), so RTP sequence
numbers, timestamps, SSRC and payload type stay per connection, as aiortc makes them.

Behind the tracks, one ``EncoderGroup`` (:mod:`peer.media.encoder_group`) per negotiated
codec (VP8, H.264, Opus) reads the source, encodes on its own thread and hands each packet to
its members:

- A member starts at a keyframe, asked for on its first read; until then it gets nothing.
- PLI/FIR from any receiver asks the group for a keyframe, at most one per 0.5 s
  (``feedback.KeyframeGate``): one lossy receiver cannot flood the others.
- REMB: the group follows its members' lowest estimate (``feedback.BitrateFollower``).
- A member whose sender falls behind (queue full) drops its backlog and waits for the
  next keyframe: it never grows memory or slows the others.
- The last member leaving closes the group: its task, thread and encoder go with it.

Three aiortc internals are used, through :mod:`peer._aiortc`: a transceiver's negotiated
codecs, the sender's keyframe hook (PLI/FIR) and its private encoder slot, where a
``SenderPort`` takes the REMB estimates.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
from collections.abc import Callable
from typing import Any

import av
from aiortc import RTCRtpTransceiver
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder as AiortcEncoder
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from peer._aiortc import negotiated_codecs, on_keyframe_request, put_encoder
from peer.media.encoder_group import EncoderGroup as EncoderGroup
from peer.media.encoder_group import EncoderStats as EncoderStats
from peer.media.encoders import Vp8Settings, encodes, make_encoder

__all__ = ["EncodedTrack", "EncoderGroup", "EncoderStats", "Encoding", "Publisher"]

log = logging.getLogger(__name__)

#: Packets a member may hold unsent: about 0.25 s of video, 0.5 s of audio.
MEMBER_QUEUE = {"video": 8, "audio": 25}


class Encoding(enum.Enum):
    """How a source reaches several connections."""

    SHARED = "shared"  # one encoder per source and codec, its packets to every connection
    PER_PEER = "per-peer"  # aiortc's way: each connection encodes its own copy


class Publisher:
    """One local source, sent to many connections (``track()``) and read locally (``frames()``)."""

    def __init__(
        self,
        source: MediaStreamTrack,
        encoding: Encoding = Encoding.SHARED,
        *,
        vp8: Vp8Settings | None = None,
        on_idle: Callable[[Publisher], None] | None = None,
    ) -> None:
        self.source = source
        self.kind: str = source.kind
        self.encoding = encoding
        self._relay = MediaRelay()
        self._vp8 = vp8
        self._groups: dict[str, EncoderGroup] = {}
        self._on_idle = on_idle

    def frames(self, *, every: bool = False) -> MediaStreamTrack:
        """The source's decoded frames, for local use (preview, per-peer encoding).

        A copy skips to the newest frame when read late, unless ``every``: that is for an
        encoder of audio, which always reads and must not leave gaps when the loop is late
        (the relay queues for it; it drains each time it runs)."""
        proxy: MediaStreamTrack = self._relay.subscribe(self.source, buffered=every)
        return proxy

    def track(self) -> MediaStreamTrack:
        """What one connection sends; give it to ``PeerLink``, which attaches it."""
        if self.encoding is Encoding.PER_PEER:
            return self.frames(every=self.kind == "audio")
        return EncodedTrack(self)

    def group_for(self, codec: RTCRtpCodecParameters) -> EncoderGroup | None:
        """The group encoding ``codec``; None when we leave that codec to aiortc."""
        key = codec.mimeType.lower()
        group = self._groups.get(key)
        if group is None:
            if not encodes(key):
                return None
            vp8 = self._vp8
            group = EncoderGroup(
                self.frames(every=self.kind == "audio"),
                key,
                lambda: make_encoder(key, vp8=vp8),
                self._group_idle,
            )
            self._groups[key] = group
            log.info("encoding %s once for every connection (%s)", self.kind, key)
        return group

    def stats(self) -> list[EncoderStats]:
        return [stats for group in self._groups.values() for stats in group.stats()]

    @property
    def idle(self) -> bool:
        """No encoder runs for it (no connection has read it yet, or none is left)."""
        return not self._groups

    def close(self) -> None:
        for group in list(self._groups.values()):
            group.close()

    def _group_idle(self, group: EncoderGroup) -> None:
        if self._groups.get(group.codec) is group:
            del self._groups[group.codec]
        if not self._groups and self._on_idle is not None:
            self._on_idle(self)


class EncodedTrack(MediaStreamTrack):
    """One connection's view of a publisher: encoded packets for its negotiated codec.

    ``attach`` ties it to its transceiver; the codec is read on the first ``recv``, which
    aiortc makes once negotiation is done. A codec we do not encode (say G.722) falls
    back to a frame copy that aiortc encodes itself.
    """

    def __init__(self, publisher: Publisher) -> None:
        super().__init__()
        self.kind = publisher.kind
        self._publisher = publisher
        self._transceiver: RTCRtpTransceiver | None = None
        self._group: EncoderGroup | None = None
        self._fallback: MediaStreamTrack | None = None
        self._packets: collections.deque[av.Packet[Any]] = collections.deque()
        self._limit = MEMBER_QUEUE.get(self.kind, 8)
        self._ready = asyncio.Event()
        self._waiting_keyframe = True
        #: Times this member's sender fell behind and restarted at a keyframe.
        self.overflows = 0

    def attach(self, transceiver: RTCRtpTransceiver) -> None:
        self._transceiver = transceiver
        # aiortc sends PLI/FIR here; it would flag the sender's own (unused) encoder.
        on_keyframe_request(transceiver.sender, self._picture_lost)

    async def recv(self) -> Any:
        if self._group is None and self._fallback is None:
            self._bind()
        if self._fallback is not None:
            return await self._fallback.recv()
        while not self._packets:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._packets.popleft()

    def deliver(self, packet: av.Packet[Any], keyframe: bool) -> None:
        """A packet from the group: queued, or skipped until this member has a keyframe."""
        if self._waiting_keyframe and not keyframe:
            return
        if len(self._packets) >= self._limit:  # the sender fell behind
            self.overflows += 1
            if self.kind == "audio":
                self._packets.popleft()  # every Opus packet stands alone: drop the oldest
            elif keyframe:
                self._packets.clear()  # the keyframe makes the backlog worthless
            else:
                self._packets.clear()  # skip to the next keyframe rather than grow
                self._waiting_keyframe = True
                if self._group is not None:
                    self._group.request_keyframe(self)
                return
        self._waiting_keyframe = False
        self._packets.append(packet)
        self._ready.set()

    def stop(self) -> None:
        super().stop()
        self._ready.set()
        if self._fallback is not None:
            self._fallback.stop()
        if self._group is not None:
            group, self._group = self._group, None
            group.remove(self)

    def _bind(self) -> None:
        if self.readyState != "live":
            raise MediaStreamError
        if self._transceiver is None or not negotiated_codecs(self._transceiver):
            raise RuntimeError("EncodedTrack read before PeerLink attached it to a transceiver")
        codec = negotiated_codecs(self._transceiver)[0]
        group = self._publisher.group_for(codec)
        if group is None:
            log.info("%s: no shared encoder, this connection encodes itself", codec.mimeType)
            self._fallback = self._publisher.frames()
            return
        self.bind(group)
        sender = self._transceiver.sender
        put_encoder(sender, SenderPort(get_encoder(codec), self))

    def bind(self, group: EncoderGroup) -> None:
        """Take ``group``'s packets from now on (done on the first read when attached)."""
        self._group = group
        group.add(self)

    def _picture_lost(self) -> None:
        if self._group is not None:
            self._group.request_keyframe(self)

    def _estimate(self, bitrate: int) -> None:
        if self._group is not None:
            self._group.estimate(self, bitrate)


class SenderPort:
    """Sits in the sender's encoder slot: packetizes shared packets, takes REMB estimates."""

    def __init__(self, packer: AiortcEncoder, track: EncodedTrack) -> None:
        self._packer = packer
        self._track = track
        self._estimate = 0

    def pack(self, packet: av.Packet[Any]) -> tuple[list[bytes], int]:
        return self._packer.pack(packet)

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        raise RuntimeError("a shared-encoding sender got a frame instead of a packet")

    @property
    def target_bitrate(self) -> int:
        return self._estimate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._estimate = bitrate
        self._track._estimate(bitrate)
