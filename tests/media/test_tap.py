"""TrackTap: reads a real track continuously, fans frames out, survives bad consumers;
Sinks: packet consumers start each video track at a keyframe."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.events import RemoteTrack
from peer.media.encoders import VideoEncoder, make_encoder
from peer.media.packets import EncodedFrame, Want, is_keyframe, wants_of
from peer.media.synthetic import SyntheticVideoTrack
from peer.media.tap import Sinks, TrackTap
from signaling.protocol import PeerId
from tests.support import seconds


class Collector:
    def __init__(self) -> None:
        self.frames: list[tuple[RemoteTrack, av.AudioFrame | av.VideoFrame]] = []
        self.ended: list[RemoteTrack] = []

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        self.frames.append((track, frame))

    def track_ended(self, track: RemoteTrack) -> None:
        self.ended.append(track)


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        self.calls += 1
        raise RuntimeError("consumer bug")

    def track_ended(self, track: RemoteTrack) -> None:
        raise RuntimeError("consumer bug")


class FiniteTrack(MediaStreamTrack):
    """Hands out ``count`` frames of a synthetic track at once, then ends like a remote track."""

    kind = "video"

    def __init__(self, count: int) -> None:
        super().__init__()
        self._source = SyntheticVideoTrack("finite", width=64, height=48, fps=120)
        self._left = count

    async def recv(self) -> av.VideoFrame:
        if self._left == 0:
            self.stop()
            raise MediaStreamError
        self._left -= 1
        return await self._source.recv()


async def _until(condition: Callable[[], bool], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_tap_reads_until_the_track_ends_and_tells_every_consumer() -> None:
    collector, broken = Collector(), Broken()
    bob = RemoteTrack(PeerId("bob"), "video")
    tap = TrackTap(bob, FiniteTrack(20), [broken, collector])
    assert tap.kind == "video"
    tap.start()
    await asyncio.wait_for(tap.wait_ended(), seconds(10))
    assert tap.ended
    assert tap.frames == 20
    assert broken.calls == 20  # a failing consumer is called again, and does not stop others
    assert len(collector.frames) == 20
    assert {track for track, _ in collector.frames} == {bob}
    assert collector.ended == [bob]
    await tap.stop()
    assert collector.ended == [bob]  # told once


async def test_tap_measures_fps_and_stop_ends_the_track_for_consumers() -> None:
    collector = Collector()
    track = SyntheticVideoTrack("alice", width=64, height=48, fps=30)
    alice = RemoteTrack(PeerId("alice"), "video")
    tap = TrackTap(alice, track, [collector])
    tap.start()
    await _until(lambda: tap.frames >= 20, seconds(10))
    assert tap.first_frame_at is not None
    assert 5 < tap.fps < 60  # about 30; loose, the machine is shared
    await tap.stop()
    assert collector.ended == [alice]
    frames = tap.frames
    await asyncio.sleep(0.1)
    assert tap.frames == frames  # no reader left
    track.stop()


class Live(Collector):
    """A Collector that also records ``track_started``."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[RemoteTrack] = []

    def track_started(self, track: RemoteTrack) -> None:
        self.started.append(track)


class RemovesOther(Collector):
    """Removes ``other`` from ``sinks`` on its first frame, before ``other`` gets that frame."""

    def __init__(self, sinks: Sinks, other: Collector) -> None:
        super().__init__()
        self._sinks, self._other = sinks, other

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        super().put_frame(track, frame)
        self._sinks.remove(self._other)


async def test_a_consumer_added_later_learns_the_live_tracks_and_gets_their_frames() -> None:
    sinks = Sinks()
    first = Live()
    sinks.add(first)
    camera, screen = RemoteTrack(PeerId("bob"), "video"), RemoteTrack(PeerId("bob"), "video")
    screen.index = 1
    sources = [SyntheticVideoTrack(f"s{i}", width=64, height=48, fps=30) for i in range(2)]
    taps = [TrackTap(camera, sources[0], sinks), TrackTap(screen, sources[1], sinks)]
    for tap in taps:
        tap.start()
    assert first.started == [camera, screen]
    assert sinks.live_tracks() == (camera, screen)
    await _until(lambda: len(first.frames) >= 10, seconds(10))
    late = Live()
    sinks.add(late)
    assert late.started == [camera, screen]  # told of what was already flowing
    await _until(lambda: {t for t, _ in late.frames} == {camera, screen}, seconds(10))
    sinks.remove(late)
    count = len(late.frames)
    before = len(first.frames)
    await _until(lambda: len(first.frames) >= before + 10, seconds(10))
    assert len(late.frames) == count  # a removed consumer gets nothing more
    await taps[1].stop()
    assert first.ended == [screen] and late.ended == []
    assert sinks.live_tracks() == (camera,)
    await taps[0].stop()
    assert sinks.live_tracks() == ()
    for source in sources:
        source.stop()


async def test_a_consumer_removed_during_a_frame_gets_not_even_that_frame() -> None:
    sinks = Sinks()
    victim = Collector()
    remover = RemovesOther(sinks, victim)
    sinks.add(remover)
    sinks.add(victim)
    sinks.add(remover)  # added once only
    tap = TrackTap(RemoteTrack(PeerId("bob"), "video"), FiniteTrack(5), sinks)
    tap.start()
    await asyncio.wait_for(tap.wait_ended(), seconds(10))
    assert len(remover.frames) == 5
    assert victim.frames == [] and victim.ended == []


class Both(Collector):
    """Takes decoded and encoded frames; ``wants`` says packets only."""

    wants = Want.PACKETS

    def __init__(self) -> None:
        super().__init__()
        self.packets: list[tuple[RemoteTrack, EncodedFrame]] = []

    def put_packet(self, track: RemoteTrack, packet: EncodedFrame) -> None:
        self.packets.append((track, packet))


def _packet(keyframe: bool, timestamp: int = 0) -> EncodedFrame:
    return EncodedFrame("VP8", b"\x00" if keyframe else b"\x01", timestamp, 90000, keyframe, 0.0)


def test_packet_consumers_start_each_video_track_at_a_keyframe_and_after_a_loss() -> None:
    sinks = Sinks()
    frames, packets = Collector(), Both()
    assert wants_of(frames) == Want.FRAMES and wants_of(packets) == Want.PACKETS
    assert not sinks.wants_frames
    sinks.add(packets)
    assert not sinks.wants_frames  # a packet consumer never makes the agent decode
    video, audio = RemoteTrack(PeerId("bob"), "video"), RemoteTrack(PeerId("bob"), "audio")
    sinks.track_started(video)
    sinks.track_started(audio)
    assert sinks.put_packet(video, _packet(False, 1))  # skipped: asks for a keyframe
    assert not sinks.put_packet(audio, EncodedFrame("opus", b"x", 0, 48000, True, 0.0))
    assert not sinks.put_packet(video, _packet(True, 2))
    assert not sinks.put_packet(video, _packet(False, 3))
    sinks.resync(video)  # a loss the jitter buffer could not repair
    assert sinks.put_packet(video, _packet(False, 4))
    assert not sinks.put_packet(video, _packet(True, 5))
    assert [(t.kind, p.timestamp) for t, p in packets.packets] == [
        ("audio", 0),
        ("video", 2),
        ("video", 3),
        ("video", 5),
    ]
    late = Both()
    sinks.add(late)  # mid-stream: its own wait for a keyframe
    assert sinks.put_packet(video, _packet(False, 6))
    assert len(packets.packets) == 5 and late.packets == []
    sinks.add(frames)
    assert sinks.wants_frames
    sinks.remove(frames)
    assert not sinks.wants_frames


def test_a_track_is_decoded_only_for_the_kinds_its_frame_consumers_use() -> None:
    """A speaker or an audio reader (``frame_kinds``) must not make every picture decoded;
    a consumer that names no kinds takes both."""
    sinks = Sinks()
    listener = Collector()
    listener.frame_kinds = frozenset({"audio"})  # type: ignore[attr-defined]
    sinks.add(listener)
    assert sinks.wants_frames_of("audio") and not sinks.wants_frames_of("video")
    both = Collector()
    sinks.add(both)
    assert sinks.wants_frames_of("audio") and sinks.wants_frames_of("video")
    sinks.remove(both)
    assert not sinks.wants_frames_of("video")
    sinks.remove(listener)
    assert not sinks.wants_frames_of("audio")


def test_keyframes_of_real_encoders() -> None:
    def frame(n: int) -> av.VideoFrame:
        picture = av.VideoFrame(64, 48, "yuv420p")
        picture.pts, picture.time_base = n * 3000, fractions.Fraction(1, 90000)
        return picture

    for mime in ("video/vp8", "video/h264"):
        encoder = make_encoder(mime)
        assert isinstance(encoder, VideoEncoder)
        first = b"".join(bytes(p) for p in encoder.encode(frame(0), True))
        later = b"".join(bytes(p) for n in (1, 2, 3) for p in encoder.encode(frame(n), False))
        name = mime.split("/")[1].upper()
        assert is_keyframe(name, first), mime
        assert later and not is_keyframe(name, later), mime
    assert is_keyframe("opus", b"\x00")
