"""Encode a local source once and send the packets to every connection.

aiortc encodes every frame again for every RTCPeerConnection (its issue 449): one
640x480 camera sent to 8 peers costs 8 encodes. A ``Publisher`` holds one source; each
connection gets ``publisher.track()``. In the default, shared mode that is an
``EncodedTrack``: it yields ``av.Packet``s, which aiortc's sender packetizes without
encoding (``RTCRtpSender._next_encoded_frame``, the "pack" path), so RTP sequence
numbers, timestamps, SSRC and payload type stay per connection, as aiortc makes them.

Behind the tracks, one ``EncoderGroup`` per negotiated codec (VP8, H.264, Opus) reads
the source, encodes on its own thread and hands each packet to its members:

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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import av
from aiortc import RTCRtpTransceiver
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder as AiortcEncoder
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from peer._aiortc import negotiated_codecs, on_keyframe_request, put_encoder
from peer.media.encoders import (
    AudioEncoder,
    VideoEncoder,
    Vp8Settings,
    bounds_for,
    encodes,
    make_encoder,
)
from peer.media.feedback import BitrateFollower, KeyframeGate, TierSplit

__all__ = ["EncodedTrack", "EncoderGroup", "EncoderStats", "Encoding", "Publisher"]

log = logging.getLogger(__name__)

#: Packets a member may hold unsent: about 0.25 s of video, 0.5 s of audio.
MEMBER_QUEUE = {"video": 8, "audio": 25}


class Encoding(enum.Enum):
    """How a source reaches several connections."""

    SHARED = "shared"  # one encoder per source and codec, its packets to every connection
    PER_PEER = "per-peer"  # aiortc's way: each connection encodes its own copy


@dataclass(frozen=True)
class EncoderStats:
    kind: str
    codec: str
    tier: int  # 0, or 1 for a second, lower-rate encoder while receivers' rates differ
    members: int
    frames: int
    keyframes: int
    keyframe_requests: int
    bitrate: int
    restarts: int


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

    def frames(self) -> MediaStreamTrack:
        """The source's decoded frames, for local use (preview, per-peer encoding)."""
        proxy: MediaStreamTrack = self._relay.subscribe(self.source, buffered=False)
        return proxy

    def track(self) -> MediaStreamTrack:
        """What one connection sends; give it to ``PeerLink``, which attaches it."""
        if self.encoding is Encoding.PER_PEER:
            return self.frames()
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
                self.frames(), key, lambda: make_encoder(key, vp8=vp8), self._group_idle
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


class Tier:
    """One encoder of a group, at one rate: the group's only one, or one of two when the
    receivers' estimates spread (``feedback.TierSplit``)."""

    def __init__(self, encoder: VideoEncoder | AudioEncoder, bitrate: BitrateFollower | None):
        self.encoder = encoder
        self.bitrate = bitrate
        self.keyframes = KeyframeGate()
        self.frames_encoded = 0
        self.keyframes_sent = 0
        self.keyframe_requests = 0


class EncoderGroup:
    """The encoding of one source for one codec; its packets go to every member.

    Usually one ``Tier``; two while the members' rate estimates differ by more than 2x.
    A member moving between tiers keeps the old tier's packets until the new tier's
    keyframe, so its picture never stops.
    """

    def __init__(
        self,
        frames: MediaStreamTrack,
        codec: str,
        make: Callable[[], VideoEncoder | AudioEncoder],
        on_idle: Callable[[EncoderGroup], None],
    ) -> None:
        self.codec = codec
        self.kind: str = frames.kind
        self._bounds = bounds_for(codec)
        self._make = make
        self._tiers: list[Tier] = [self._new_tier(None)]
        #: Each member's tier, and the tier it moves to at that tier's next keyframe.
        self._tier_of: dict[EncodedTrack, Tier] = {}
        self._moving: dict[EncodedTrack, Tier] = {}
        self._estimates: dict[EncodedTrack, int] = {}
        self._split: TierSplit[EncodedTrack] = TierSplit()
        self._frames = frames
        self._on_idle = on_idle
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"meshpeer-encode-{codec}")
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def members(self) -> set[EncodedTrack]:
        return set(self._tier_of)

    def add(self, member: EncodedTrack) -> None:
        tier = self._tiers[0]
        self._tier_of[member] = tier
        tier.keyframes.request(urgent=True)  # it shows nothing until one arrives

    def remove(self, member: EncodedTrack) -> None:
        self._tier_of.pop(member, None)
        self._moving.pop(member, None)
        if self._estimates.pop(member, None) is not None:
            self._replan()
        if not self._tier_of:
            self.close()
        else:
            self._drop_empty_tiers()

    def request_keyframe(self, member: EncodedTrack) -> None:
        tier = self._tier_of.get(member)
        if tier is not None:
            tier.keyframe_requests += 1
            tier.keyframes.request()

    def estimate(self, member: EncodedTrack, bitrate: int) -> None:
        bounds = self._bounds
        if bounds is None or member not in self._tier_of:
            return
        self._estimates[member] = max(bounds.low, min(bitrate, bounds.high))
        self._replan()

    def stats(self) -> list[EncoderStats]:
        return [
            EncoderStats(
                kind=self.kind,
                codec=self.codec,
                tier=index,
                members=sum(t is tier for t in self._tier_of.values()),
                frames=tier.frames_encoded,
                keyframes=tier.keyframes_sent,
                keyframe_requests=tier.keyframe_requests,
                bitrate=tier.encoder.bitrate,
                restarts=tier.encoder.restarts,
            )
            for index, tier in enumerate(self._tiers)
        ]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        self._frames.stop()
        self._thread.shutdown(wait=False)
        for member in list(self._tier_of):
            member.stop()
        self._on_idle(self)

    # -- tiers ---------------------------------------------------------------------------
    def _new_tier(self, initial: int | None) -> Tier:
        bounds = self._bounds
        follower = None
        if bounds is not None:
            follower = BitrateFollower(initial or bounds.initial, bounds.low, bounds.high)
        tier = Tier(self._make(), follower)
        if follower is not None:
            tier.encoder.bitrate = follower.target
        return tier

    def _destination(self, member: EncodedTrack) -> Tier:
        return self._moving.get(member) or self._tier_of[member]

    def _replan(self) -> None:
        """Place members by their estimates (one tier or two), then set each tier's rate."""
        now = time.monotonic()
        low = self._split.plan(self._estimates, now)
        if low and len(self._tiers) == 1:
            estimates = [self._estimates[m] for m in low if m in self._estimates]
            self._tiers.append(self._new_tier(min(estimates)))
            log.info(
                "%s: a second, lower-rate encoder for %d slow receiver(s)", self.codec, len(low)
            )
        if len(self._tiers) == 2:
            main, lower = self._tiers
            for member in self._tier_of:
                self._move(member, lower if member in low else main)
        for tier in self._tiers:
            if tier.bitrate is None:
                continue
            mine = {m: b for m, b in self._estimates.items() if self._destination(m) is tier}
            changed = False
            for gone in tier.bitrate.receivers - mine.keys():
                changed |= tier.bitrate.forget(gone, now)
            for member, bitrate in mine.items():
                changed |= tier.bitrate.estimate(member, bitrate, now)
            if changed:
                tier.encoder.bitrate = tier.bitrate.target
        self._drop_empty_tiers()

    def _move(self, member: EncodedTrack, tier: Tier) -> None:
        if self._tier_of[member] is tier:
            self._moving.pop(member, None)
        elif self._moving.get(member) is not tier:
            self._moving[member] = tier
            tier.keyframes.request(urgent=True)

    def _drop_empty_tiers(self) -> None:
        used = set(self._tier_of.values()) | set(self._moving.values())
        kept = [tier for tier in self._tiers if tier in used]
        if kept and len(kept) != len(self._tiers):
            self._tiers = kept
            log.info("%s: back to %d encoder(s)", self.codec, len(kept))

    # -- encoding ------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await self._frames.recv()
                out: dict[Tier, list[tuple[av.Packet[Any], bool]]] = {}
                for tier in list(self._tiers):  # in turn, on one thread
                    keyframe = tier.keyframes.take(time.monotonic())
                    restarts = tier.encoder.restarts
                    packets = await loop.run_in_executor(
                        self._thread, tier.encoder.encode, frame, keyframe
                    )
                    tier.frames_encoded += 1
                    if tier.encoder.restarts != restarts:  # a new context starts with a keyframe
                        tier.keyframes.produced(time.monotonic())
                    marked = [(p, self.kind == "audio" or bool(p.is_keyframe)) for p in packets]
                    tier.keyframes_sent += (
                        sum(key for _, key in marked) if self.kind == "video" else 0
                    )
                    out[tier] = marked
                self._deliver(out)
        except MediaStreamError:
            log.info("%s source ended", self.kind)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("shared %s encoder failed", self.codec)
        self.close()

    def _deliver(self, out: dict[Tier, list[tuple[av.Packet[Any], bool]]]) -> None:
        switched = False
        for member, tier in list(self._tier_of.items()):
            target = self._moving.get(member)
            if target is not None and any(key for _, key in out.get(target, ())):
                self._tier_of[member] = tier = target  # switch streams at a keyframe
                del self._moving[member]
                switched = True
            for packet, key in out.get(tier, ()):
                member.deliver(packet, key)
        if switched:
            self._drop_empty_tiers()


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
