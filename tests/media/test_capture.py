"""VideoSource and AudioSource alone: capture from threads, scaling, pacing, the ring, errors."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import av
import cv2
import numpy as np
import pytest

from peer.media.capture import AudioSource, SourceStopped, VideoSource
from tests.support import seconds


def picture(bgr: tuple[int, int, int], width: int = 64, height: int = 48) -> np.ndarray:
    return np.full((height, width, 3), bgr, dtype=np.uint8)


def bgr_of(frame: av.VideoFrame) -> np.ndarray:
    """The mean BGR colour of a yuv420p frame."""
    assert frame.format.name == "yuv420p"
    bgr = cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
    return bgr.reshape(-1, 3).mean(axis=0)


def in_threads(count: int, work: Callable[[int], None]) -> None:
    """Runs ``work(i)`` in ``count`` plain threads started together; re-raises a failure."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            work(i)
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds(10))
    assert not errors, errors


async def test_video_is_black_before_the_first_picture_then_the_newest_repeated() -> None:
    source = VideoSource(width=32, height=24, fps=100)
    try:
        first = await asyncio.wait_for(source.recv(), seconds(5))
        assert (first.width, first.height) == (32, 24)
        assert bgr_of(first).max() < 4  # black
        source.capture(picture((0, 0, 255)))  # red, replaced before it goes out
        source.capture(picture((255, 0, 0)))  # blue
        frames = [await asyncio.wait_for(source.recv(), seconds(5)) for _ in range(3)]
    finally:
        source.stop()
    for frame in frames:  # the newest, then repeated
        blue, green, red = bgr_of(frame)
        assert blue > 200 and green < 40 and red < 40, bgr_of(frame)
    assert (source.captured, source.sent, source.replaced) == (2, 1, 1)
    assert source.repeated == 1 + 2  # the black one, then the blue one twice more
    assert [f.pts for f in [first, *frames]] == [0, 900, 1800, 2700]  # 90 kHz at 100 fps


async def test_video_scales_to_its_size_and_reads_rgb() -> None:
    source = VideoSource(width=320, height=240, fps=30, format="rgb24")
    try:
        source.capture(picture((255, 0, 0), width=101, height=77))  # red in RGB
        frame = await asyncio.wait_for(source.recv(), seconds(5))
    finally:
        source.stop()
    assert (frame.width, frame.height) == (320, 240)
    blue, green, red = bgr_of(frame)
    assert red > 200 and green < 40 and blue < 40


async def test_video_captures_from_several_threads_at_once() -> None:
    source = VideoSource(width=64, height=48, fps=30)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]

    def feed(i: int) -> None:
        for _ in range(50):
            source.capture(picture(colours[i]))

    try:
        await asyncio.to_thread(in_threads, 4, feed)
        frame = await asyncio.wait_for(source.recv(), seconds(5))
    finally:
        source.stop()
    assert source.captured == 200
    assert source.sent == 1 and source.replaced == 199
    assert any(np.abs(bgr_of(frame) - c).max() < 20 for c in colours), bgr_of(frame)


async def test_video_is_paced_at_fps_however_fast_capture_is_called() -> None:
    """Pictures captured at ~1 kHz go out at 20 fps: 10 frames take 9/20 s at least."""
    source = VideoSource(width=32, height=24, fps=20)
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            source.capture(picture((0, 255, 0)))
            time.sleep(0.001)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        started = time.monotonic()
        frames = [await asyncio.wait_for(source.recv(), seconds(5)) for _ in range(10)]
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        feeder.join()
        source.stop()
    assert elapsed >= 9 / 20 - 0.01, elapsed
    assert [f.pts for f in frames] == [i * 4500 for i in range(10)]
    assert source.sent + source.repeated == 10
    assert source.captured > 10 * 3  # far more captured than sent: the rest were replaced
    assert source.captured - source.sent - source.replaced in (0, 1)  # one may be waiting


def test_video_capture_says_what_is_wrong() -> None:
    source = VideoSource(width=32, height=24)
    with pytest.raises(ValueError, match="dtype float32"):
        source.capture(np.zeros((24, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(24, 32\)"):
        source.capture(np.zeros((24, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(24, 32, 4\)"):
        source.capture(np.zeros((24, 32, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="list"):
        source.capture([[0, 0, 0]])  # type: ignore[arg-type]
    source.stop()
    with pytest.raises(SourceStopped, match="stopped"):
        source.capture(picture((0, 0, 0)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0, "height": 24}, "0x24"),
        ({"width": 31, "height": 24}, "even, got 31x24"),
        ({"width": 32, "height": 24, "fps": 0}, "fps must be positive, got 0"),
        ({"width": 32, "height": 24, "format": "yuv"}, "'yuv'"),
    ],
)
def test_video_source_settings_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VideoSource(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 0}, "sample_rate must be positive, got 0"),
        ({"channels": 3}, "channels must be 1 or 2, got 3"),
        ({"buffer": 0.0}, "prebuffer < buffer"),
    ],
)
def test_audio_source_settings_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AudioSource(**kwargs)  # type: ignore[arg-type]


def test_audio_capture_says_what_is_wrong() -> None:
    source = AudioSource(sample_rate=16_000, channels=2)
    with pytest.raises(ValueError, match="got dtype float64"):
        source.capture(np.zeros((160, 2)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(n, 2\), got shape \(160, 1\)"):
        source.capture(np.zeros((160, 1), dtype=np.int16))
    with pytest.raises(ValueError, match=r"got shape \(160,\)"):
        source.capture(np.zeros(160, dtype=np.int16))  # 1-D is mono only
    source.stop()
    with pytest.raises(SourceStopped, match="stopped"):
        source.capture(np.zeros((160, 2), dtype=np.int16))


async def test_audio_is_silence_when_empty_then_plays_what_was_captured() -> None:
    source = AudioSource(sample_rate=48_000, channels=1, prebuffer=0.0)
    try:
        silent = await asyncio.wait_for(source.recv(), seconds(5))
        source.capture(np.full(960 + 480, 1000, dtype=np.int16))
        full = await asyncio.wait_for(source.recv(), seconds(5))
        half = await asyncio.wait_for(source.recv(), seconds(5))
        after = await asyncio.wait_for(source.recv(), seconds(5))
    finally:
        source.stop()
    for frame in (silent, full, half, after):
        assert (frame.format.name, frame.layout.name) == ("s16", "stereo")
        assert frame.sample_rate == 48_000
        assert frame.samples == 960
    assert [f.pts for f in (silent, full, half, after)] == [0, 960, 1920, 2880]
    assert not silent.to_ndarray().any()
    assert (full.to_ndarray() == 1000).all()
    samples = half.to_ndarray().reshape(-1, 2)
    assert (samples[:480] == 1000).all() and not samples[480:].any()
    assert not after.to_ndarray().any()
    assert (source.silent, source.underruns) == (2, 1)


async def test_audio_overflow_drops_the_oldest_and_counts_them() -> None:
    """A 0.5 s buffer given 1 s at 48 kHz: the first half is dropped."""
    source = AudioSource(sample_rate=48_000, channels=2, buffer=0.5, prebuffer=0.0)
    ramp = np.arange(48_000, dtype=np.int16)
    try:
        for start in range(0, 48_000, 4_800):
            chunk = ramp[start : start + 4_800]
            source.capture(np.stack([chunk, -chunk], axis=1))
        frame = await asyncio.wait_for(source.recv(), seconds(5))
    finally:
        source.stop()
    assert source.overflow == 24_000
    assert source.captured == 48_000
    left = frame.to_ndarray().reshape(-1, 2)[:, 0]
    assert (left == ramp[24_000 : 24_000 + 960]).all()  # the newest half kept, in order


async def test_audio_captures_from_several_threads_at_once() -> None:
    source = AudioSource(sample_rate=16_000, channels=1, buffer=2.0)

    def feed(i: int) -> None:
        for _ in range(50):
            source.capture(np.full((160, 1), 0.25, dtype=np.float32))

    try:
        await asyncio.to_thread(in_threads, 4, feed)
    finally:
        source.stop()
    assert source.captured == 4 * 50 * 160
    assert source.overflow == 0
    # 2 s at 16 kHz become 2 s at 48 kHz (minus what the resampler still holds).
    assert abs(source.buffered - 96_000) < 100, source.buffered


async def test_audio_is_resampled_to_48_khz_and_keeps_its_pitch() -> None:
    source = AudioSource(sample_rate=16_000, channels=1, prebuffer=0.0)
    t = np.arange(16_000) / 16_000
    source.capture((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    try:
        frames = [await asyncio.wait_for(source.recv(), seconds(5)) for _ in range(40)]
    finally:
        source.stop()
    samples = np.concatenate([f.to_ndarray().reshape(-1, 2)[:, 0] for f in frames])
    assert len(samples) == 40 * 960
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = np.argmax(spectrum) * 48_000 / len(samples)
    assert abs(peak - 1000) <= 5, peak
    assert 0.45 * 32767 < np.abs(samples[1000:]).max() < 0.55 * 32767
