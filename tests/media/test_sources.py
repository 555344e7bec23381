"""Local sources: synthetic video, tone, webcam errors, looping files."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from peer.media.errors import MediaSourceError
from peer.media.sources import VideoSettings, open_local_media
from peer.media.synthetic import SyntheticVideoTrack, ToneAudioTrack, tone_frequency
from tests.media.clips import make_clip
from tests.support import seconds


async def test_synthetic_video_frames_are_yuv420p_paced_and_changing() -> None:
    media = open_local_media(
        "synthetic", "none", label="alice", settings=VideoSettings(320, 240, fps=60)
    )
    try:
        assert media.audio is None
        track = media.video
        assert isinstance(track, SyntheticVideoTrack)
        frames = [await asyncio.wait_for(track.recv(), seconds(5)) for _ in range(12)]
    finally:
        media.stop()
    assert {f.format.name for f in frames} == {"yuv420p"}
    assert {(f.width, f.height) for f in frames} == {(320, 240)}
    assert [f.pts for f in frames] == [i * 1500 for i in range(12)]  # 90 kHz at 60 fps
    assert {str(f.time_base) for f in frames} == {"1/90000"}
    lumas = [f.to_ndarray()[:240] for f in frames]
    counter = slice(200, 240), slice(0, 110)  # "#000001" at the bottom left
    for before, after in itertools.pairwise(lumas):
        assert not np.array_equal(before[counter], after[counter])
    title = slice(0, 32), slice(0, 160)
    assert np.array_equal(lumas[0][title], lumas[-1][title])  # the label stays put


async def test_synthetic_video_shows_its_label() -> None:
    alice = SyntheticVideoTrack("alice", width=320, height=240, fps=30)
    bob = SyntheticVideoTrack("bob", width=320, height=240, fps=30)
    title = slice(0, 32), slice(0, 160)
    a = (await alice.recv()).to_ndarray()[title]
    b = (await bob.recv()).to_ndarray()[title]
    assert not np.array_equal(a, b)
    assert (a > 200).any()  # white text on the dark title band
    alice.stop()
    bob.stop()


def _dominant_frequency(frames: list[av.AudioFrame]) -> float:
    samples = np.concatenate([f.to_ndarray().reshape(-1, 2)[:, 0] for f in frames])
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * 48_000 / len(samples))


async def test_tone_pitch_differs_per_label() -> None:
    labels = ["alice", "bob", "carol"]
    tracks = [ToneAudioTrack(label) for label in labels]

    async def collect(track: ToneAudioTrack) -> list[av.AudioFrame]:
        return [await track.recv() for _ in range(10)]  # 200 ms: 5 Hz resolution

    try:
        results = await asyncio.wait_for(asyncio.gather(*(collect(t) for t in tracks)), seconds(5))
    finally:
        for track in tracks:
            track.stop()
    for frames in results:
        assert {(f.format.name, f.layout.name, f.sample_rate, f.samples) for f in frames} == {
            ("s16", "stereo", 48_000, 960)
        }
        assert [f.pts for f in frames] == [i * 960 for i in range(10)]
    measured = [_dominant_frequency(frames) for frames in results]
    for label, frequency in zip(labels, measured, strict=True):
        assert frequency == pytest.approx(tone_frequency(label), abs=6)
    assert len({round(f / 20) for f in measured}) == 3  # clearly distinct pitches


def test_missing_webcam_is_a_clear_error() -> None:
    with pytest.raises(MediaSourceError, match="no camera at /dev/video9"):
        open_local_media("webcam:/dev/video9", "none", label="x")


def test_a_device_that_is_no_camera_is_a_clear_error(tmp_path: Path) -> None:
    not_a_camera = tmp_path / "video0"
    not_a_camera.write_bytes(b"")
    with pytest.raises(MediaSourceError, match=r"no usable camera at .*video0"):
        open_local_media(f"webcam:{not_a_camera}", "none", label="x")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MediaSourceError, match="no such media file"):
        open_local_media(f"file:{tmp_path / 'nope.mkv'}", "tone", label="x")


async def test_file_source_loops_with_increasing_timestamps(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mkv", seconds=0.5, fps=30)
    media = open_local_media(f"file:{clip}", f"file:{clip}", label="x")
    assert media.video is not None
    assert media.audio is not None
    audio_frames: list[av.AudioFrame] = []

    async def drain_audio() -> None:
        assert media.audio is not None
        while True:
            audio_frames.append(await media.audio.recv())

    drain = asyncio.create_task(drain_audio())
    try:
        video = [await asyncio.wait_for(media.video.recv(), seconds(5)) for _ in range(40)]
    finally:
        media.stop()
        drain.cancel()
    assert {f.format.name for f in video} == {"yuv420p"}
    pts = [f.pts for f in video]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert video[-1].time > 1.0  # more than two passes over a 0.5 s clip
    assert audio_frames
    assert {(f.format.name, f.samples) for f in audio_frames} == {("s16", 960)}
    audio_pts = [f.pts for f in audio_frames]
    assert all(b > a for a, b in itertools.pairwise(audio_pts))
    assert audio_frames[-1].time > 0.8


async def test_file_audio_with_synthetic_video(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mkv", seconds=0.5)
    media = open_local_media("synthetic", f"file:{clip}", label="x")
    try:
        assert isinstance(media.video, SyntheticVideoTrack)
        assert media.audio is not None
        frame = await asyncio.wait_for(media.audio.recv(), seconds(5))
        assert isinstance(frame, av.AudioFrame)
    finally:
        media.stop()


def test_sources_import_in_a_fresh_interpreter() -> None:
    """`import peer.media.sources` must work: it pulls OpenCV, which needs libGL."""
    result = subprocess.run(
        [sys.executable, "-c", "import peer.media.sources, peer.media.mosaic"],
        capture_output=True,
        text=True,
        timeout=seconds(60),
    )
    assert result.returncode == 0, result.stderr
