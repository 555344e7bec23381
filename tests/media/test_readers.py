"""The frame readers' core: slots, conversion, resampling into blocks, the 5 s queue, endings.

Real PyAV frames fed straight to the readers (what a tap would hand them); the readers
with real agents are in tests/peer/test_frames.py.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import av
import numpy as np
import pytest

from peer.events import Kind, RemoteTrack
from peer.media.readers import (
    AudioReader,
    ReceivedAudio,
    ReceivedVideo,
    VideoReader,
    audio_frames,
    video_frames,
)
from peer.media.tap import FrameConsumer
from signaling.protocol import PeerId
from tests.support import eventually, seconds

ALICE, BOB = PeerId("alice"), PeerId("bob")


def remote(peer: PeerId, kind: Kind) -> RemoteTrack:
    return RemoteTrack(peer, kind, lambda: None)


def picture(pts: int, width: int = 64, height: int = 48, value: int = 0) -> av.VideoFrame:
    array = np.full((height, width, 3), value, np.uint8)
    array[..., 2] = 200  # red in BGR
    frame = av.VideoFrame.from_ndarray(array, format="bgr24").reformat(format="yuv420p")
    frame.pts = pts
    frame.time_base = Fraction(1, 90_000)
    return frame


def tone(index: int, frequency: float = 1000.0, samples: int = 960) -> av.AudioFrame:
    """The ``index``-th 20 ms frame of a sine, s16 stereo 48 kHz, as aiortc decodes Opus."""
    t = (np.arange(samples) + index * samples) / 48_000
    mono = (np.sin(2 * np.pi * frequency * t) * 8000).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(
        np.repeat(mono, 2).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = 48_000
    frame.pts = index * samples
    frame.time_base = Fraction(1, 48_000)
    return frame


def test_bad_arguments_name_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="bgr24, rgb24, gray"):
        VideoReader(None, "yuv")
    with pytest.raises(ValueError, match="8000, 16000"):
        AudioReader(None, sample_rate=12345)
    with pytest.raises(ValueError, match="1 or 2"):
        AudioReader(None, channels=6)
    with pytest.raises(ValueError, match="10, 20, 30"):
        AudioReader(None, block_ms=25)


def test_a_slow_reader_gets_the_newest_frame_and_counts_the_skipped() -> None:
    reader = VideoReader(None)
    track = remote(ALICE, "video")
    for n in range(5):
        reader.put_frame(track, picture(n * 3000))
    taken = reader.take()
    assert taken is not None
    _, frame, stamp, skipped, _ = taken
    assert frame.pts == 4 * 3000 and skipped == 4
    assert stamp == pytest.approx(4 * 3000 / 90_000)
    assert reader.take() is None  # no backlog: that was the only one
    reader.put_frame(track, picture(5 * 3000))
    taken = reader.take()
    assert taken is not None and taken[3] == 0


def test_tracks_take_turns_and_other_kinds_or_peers_are_left_out() -> None:
    reader = VideoReader(ALICE)
    first, second = remote(ALICE, "video"), remote(ALICE, "video")
    reader.put_frame(remote(BOB, "video"), picture(0))
    reader.put_frame(remote(ALICE, "audio"), tone(0))
    order = []
    for n in range(6):  # the first track sends every time, the second once
        reader.put_frame(first, picture(n))
        if n == 1:
            reader.put_frame(second, picture(n))
        if n % 2:
            taken = reader.take()
            assert taken is not None
            order.append(taken[0])
    assert order == [first, second, first]


async def test_conversion_shapes_and_values_off_the_loop() -> None:
    track = remote(ALICE, "video")
    executor = ThreadPoolExecutor(1)
    try:
        for format, shape in [("bgr24", (48, 64, 3)), ("rgb24", (48, 64, 3)), ("gray", (48, 64))]:
            reader = VideoReader(None, format)
            reader.put_frame(track, picture(0))
            reader.close()
            got = [item async for item in reader.frames(executor)]
            assert len(got) == 1
            array = got[0].array
            assert array.dtype == np.uint8 and array.shape == shape
            if format == "bgr24":
                assert array[..., 2].mean() > 150 and array[..., 0].mean() < 50
            if format == "rgb24":
                assert array[..., 0].mean() > 150 and array[..., 2].mean() < 50
    finally:
        executor.shutdown()


def test_audio_blocks_are_exact_continuous_and_keep_the_tone() -> None:
    reader = AudioReader(None, sample_rate=16000, channels=1, block_ms=20)
    track = remote(BOB, "audio")
    for n in range(100):  # 2 s
        reader.put_frame(track, tone(n))
    blocks: list[ReceivedAudio] = []
    while (block := reader.take()) is not None:
        blocks.append(block)
    assert all(b.array.shape == (320, 1) and b.array.dtype == np.int16 for b in blocks)
    total = sum(len(b.array) for b in blocks)
    assert 32_000 * 0.99 <= total <= 32_000
    stamps = [b.timestamp for b in blocks]
    assert stamps == sorted(stamps) and stamps[-1] == pytest.approx(1.98, abs=0.02)
    samples = np.concatenate([b.array[:, 0] for b in blocks]).astype(float)
    peak = np.argmax(np.abs(np.fft.rfft(samples))) * 16000 / len(samples)
    assert peak == pytest.approx(1000, abs=5)


def test_stereo_and_other_block_sizes() -> None:
    reader = AudioReader(None, sample_rate=48000, channels=2, block_ms=100)
    track = remote(BOB, "audio")
    for n in range(20):
        reader.put_frame(track, tone(n))
    blocks = []
    while (block := reader.take()) is not None:
        blocks.append(block)
    assert len(blocks) in (3, 4) and all(b.array.shape == (4800, 2) for b in blocks)


def test_a_slow_audio_reader_loses_the_oldest_blocks() -> None:
    reader = AudioReader(None)
    track = remote(BOB, "audio")
    for n in range(350):  # 7 s unread: 5 s are kept
        reader.put_frame(track, tone(n))
    first = reader.take()
    assert first is not None
    assert reader.capacity == 250
    assert first.dropped == reader.dropped and 95 <= reader.dropped <= 100
    assert first.timestamp == pytest.approx(7.0 - 5.0, abs=0.05)  # the oldest went
    rest = 1
    while (block := reader.take()) is not None:
        assert block.dropped == 0
        rest += 1
    assert rest == 250


def test_audio_tracks_take_turns() -> None:
    reader = AudioReader(None)
    one, two = remote(ALICE, "audio"), remote(BOB, "audio")
    for n in range(10):
        reader.put_frame(one, tone(n))
        reader.put_frame(two, tone(n))
    peers = [block.peer for block in iter(reader.take, None)]
    assert peers[:6] == [ALICE, BOB] * 3


class Registry:
    """The agent's consumers as the readers see them (add/remove)."""

    def __init__(self) -> None:
        self.consumers: list[FrameConsumer] = []

    def add(self, consumer: FrameConsumer) -> None:
        self.consumers.append(consumer)

    def remove(self, consumer: FrameConsumer) -> None:
        self.consumers.remove(consumer)


async def test_a_peer_reader_ends_when_the_peer_leaves_and_all_end_on_leave() -> None:
    sinks, left = Registry(), asyncio.Event()
    alice_video = video_frames(sinks, left, ALICE, "bgr24")
    everyone = audio_frames(sinks, left, None, 16000, 1, 20)
    got: list[ReceivedVideo] = []

    async def read_alice() -> None:
        async for item in alice_video:
            got.append(item)

    async def read_all() -> int:
        return len([item async for item in everyone])

    alice_task, all_task = asyncio.create_task(read_alice()), asyncio.create_task(read_all())
    await asyncio.sleep(0.05)
    assert len(sinks.consumers) == 2
    video_reader, audio_reader = sinks.consumers
    assert isinstance(video_reader, VideoReader) and isinstance(audio_reader, AudioReader)
    video_reader.put_frame(remote(ALICE, "video"), picture(0))
    bob_audio = remote(BOB, "audio")
    audio_reader.put_frame(bob_audio, tone(0))
    audio_reader.put_frame(bob_audio, tone(1))
    await audio_reader.peer_closed(BOB, gone=True)  # not its peer: goes on
    await video_reader.peer_closed(ALICE, gone=False)  # a connection replaced: goes on
    await eventually(lambda: got, seconds(2), "alice's frame")
    assert not alice_task.done() and len(got) == 1
    await video_reader.peer_closed(ALICE, gone=True)
    await asyncio.wait_for(alice_task, seconds(2))
    assert sinks.consumers == [audio_reader] and not all_task.done()
    left.set()
    assert await asyncio.wait_for(all_task, seconds(2)) >= 1  # the queued blocks, then the end
    assert sinks.consumers == []
    # After the agent left, a new iterator ends at once.
    assert [item async for item in video_frames(sinks, left, None, "gray")] == []
