"""One encode of a local source per codec, its packets handed to every member.

An ``EncoderGroup`` (made by :class:`peer.media.fanout.Publisher` for each negotiated codec)
reads the source, encodes on its own thread and hands each packet to its members (the
connections' :class:`peer.media.fanout.EncodedTrack`). Feedback from the members steers it:
keyframe requests through ``feedback.KeyframeGate``, REMB estimates through
``feedback.BitrateFollower``, and a second, lower-rate ``Tier`` while the estimates spread
(``feedback.TierSplit``). It touches no aiortc internals: the members do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.media.encoders import AudioEncoder, VideoEncoder, bounds_for
from peer.media.feedback import BitrateFollower, KeyframeGate, TierSplit

__all__ = ["EncoderGroup", "EncoderStats", "Member", "Tier"]

log = logging.getLogger(__name__)


class Member(Protocol):
    """What the group needs of a member (an :class:`peer.media.fanout.EncodedTrack`)."""

    def deliver(self, packet: av.Packet[Any], keyframe: bool) -> None: ...

    def stop(self) -> None: ...

    def __hash__(self) -> int: ...


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
        self._tier_of: dict[Member, Tier] = {}
        self._moving: dict[Member, Tier] = {}
        self._estimates: dict[Member, int] = {}
        self._split: TierSplit[Member] = TierSplit()
        self._frames = frames
        self._on_idle = on_idle
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"meshpeer-encode-{codec}")
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def members(self) -> set[Member]:
        return set(self._tier_of)

    def add(self, member: Member) -> None:
        tier = self._tiers[0]
        self._tier_of[member] = tier
        tier.keyframes.request(urgent=True)  # it shows nothing until one arrives

    def remove(self, member: Member) -> None:
        self._tier_of.pop(member, None)
        self._moving.pop(member, None)
        if self._estimates.pop(member, None) is not None:
            self._replan()
        if not self._tier_of:
            self.close()
        else:
            self._drop_empty_tiers()

    def request_keyframe(self, member: Member) -> None:
        tier = self._tier_of.get(member)
        if tier is not None:
            tier.keyframe_requests += 1
            tier.keyframes.request()

    def estimate(self, member: Member, bitrate: int) -> None:
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

    def _destination(self, member: Member) -> Tier:
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

    def _move(self, member: Member, tier: Tier) -> None:
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
