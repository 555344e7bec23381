"""A second, lower-rate encoder while receivers' rate estimates differ by more than 2x:
real encoders and decoders, the group driven directly (estimates as REMB would give them;
the REMB path itself is pinned in test_aiortc_internals.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import av
import pytest

from peer.media.encoder_group import EncoderGroup
from peer.media.encoders import make_encoder
from peer.media.fanout import EncodedTrack, Publisher
from peer.media.feedback import TierSplit
from peer.media.synthetic import SyntheticVideoTrack
from tests.support import eventually, seconds

#: Which encoder made each packet (id(packet) -> encoder number), kept by ``Tagged``.
MADE_BY: dict[int, int] = {}


class Tagged:
    """A real VP8 encoder that notes which encoder made each of its packets."""

    made = 0

    def __init__(self) -> None:
        self._encoder = make_encoder("video/vp8")
        Tagged.made += 1
        self.number = Tagged.made

    def encode(self, frame: Any, keyframe: bool) -> list[av.Packet[Any]]:
        packets = self._encoder.encode(frame, keyframe)
        for packet in packets:
            MADE_BY[id(packet)] = self.number
        return packets

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "bitrate":
            self._encoder.bitrate = value
        else:
            super().__setattr__(name, value)


@dataclass
class Viewer:
    """Reads one member's packets and decodes them, as a receiver would."""

    track: EncodedTrack
    decoder: av.CodecContext = field(default_factory=lambda: av.CodecContext.create("libvpx", "r"))
    decoded: int = 0
    errors: int = 0
    #: (encoder number, keyframe) of each packet received, in order.
    packets: list[tuple[int, bool]] = field(default_factory=list)

    def switches(self) -> list[tuple[int, bool]]:
        """Each packet that came from another encoder than the one before it."""
        return [b for a, b in itertools.pairwise(self.packets) if a[0] != b[0]]

    async def run(self) -> None:
        while True:
            packet = await self.track.recv()
            data = bytes(packet)
            self.packets.append((MADE_BY.get(id(packet), 0), not data[0] & 1))  # RFC 6386 9.1
            try:
                self.decoded += len(self.decoder.decode(av.Packet(data)))
            except av.error.FFmpegError:
                self.errors += 1


@dataclass
class Room:
    group: EncoderGroup
    fast: Viewer
    slow: Viewer
    idle: list[EncoderGroup]

    def tiers(self) -> list[tuple[int, int]]:
        """(members, bitrate) per tier."""
        return [(s.members, s.bitrate) for s in self.group.stats()]


@pytest.fixture
async def room() -> AsyncIterator[Room]:
    source = SyntheticVideoTrack("tiers", width=160, height=120, fps=30)
    publisher = Publisher(source)
    idle: list[EncoderGroup] = []
    group = EncoderGroup(
        publisher.frames(),
        "video/vp8",
        Tagged,
        idle.append,  # type: ignore[arg-type]
    )
    viewers = [Viewer(EncodedTrack(publisher)) for _ in range(2)]
    for viewer in viewers:
        viewer.track.bind(group)
    tasks = [asyncio.ensure_future(v.run()) for v in viewers]
    try:
        yield Room(group, viewers[0], viewers[1], idle)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        group.close()
        source.stop()


async def decoding(*viewers: Viewer, frames: int = 15) -> None:
    start = [v.decoded for v in viewers]
    await eventually(
        lambda: all(v.decoded - s >= frames for v, s in zip(viewers, start, strict=True)),
        seconds(5),
        f"{frames} more frames decoded by each viewer",
    )


async def spread(room: Room) -> None:
    """Estimates 1.4 Mbps and 0.3 Mbps, reported (as REMB) until the split's hold is over."""
    room.group.estimate(room.fast.track, 1_400_000)
    room.group.estimate(room.slow.track, 300_000)
    assert len(room.group.stats()) == 1  # a ramping estimate gets no encoder of its own
    await asyncio.sleep(TierSplit.hold + 0.1)
    room.group.estimate(room.slow.track, 300_000)


async def test_one_tier_while_estimates_are_close(room: Room) -> None:
    await decoding(room.fast, room.slow)
    room.group.estimate(room.fast.track, 900_000)
    room.group.estimate(room.slow.track, 600_000)
    assert room.tiers() == [(2, 900_000)]  # a fall within 1 s of a change waits ...
    await asyncio.sleep(1.1)
    room.group.estimate(room.slow.track, 600_000)  # ... for the next report
    await decoding(room.fast, room.slow)
    assert room.tiers() == [(2, 600_000)]


async def test_a_slow_receiver_gets_its_own_tier_and_comes_back(room: Room) -> None:
    group = room.group
    await decoding(room.fast, room.slow)
    await spread(room)
    await decoding(room.fast, room.slow)
    assert room.tiers() == [(1, 1_400_000), (1, 300_000)]
    encoded = [s.frames for s in group.stats()]
    await decoding(room.fast, room.slow)
    assert all(s.frames > e for s, e in zip(group.stats(), encoded, strict=True))  # two encodes

    # Within 1.5x of the fastest again: back to one tier, at the lowest estimate.
    group.estimate(room.slow.track, 1_000_000)
    await decoding(room.fast, room.slow)
    assert room.tiers() == [(2, 1_000_000)]
    await decoding(room.fast, room.slow)
    assert room.fast.errors == room.slow.errors == 0
    # The slow receiver moved to the lower tier's encoder and back, each time at a keyframe;
    # the fast one stayed on one stream (rate changes restart its encoder: a keyframe too).
    assert len(room.slow.switches()) >= 2
    assert all(key for _, key in room.slow.switches() + room.fast.switches())


async def test_the_lower_tier_closes_with_its_last_member(room: Room) -> None:
    group = room.group
    await spread(room)
    await decoding(room.fast, room.slow)
    assert len(group.stats()) == 2
    room.slow.track.stop()
    assert room.tiers() == [(1, 1_400_000)]
    await decoding(room.fast)
    room.fast.track.stop()
    assert room.idle == [group]
