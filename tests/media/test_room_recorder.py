"""RoomRecorder alone: the audio mix as a table, and a short file from synthetic taps.

The room file from real agents (three bots for 60 s, a peer leaving, SIGKILL) is in
tests/peer/test_room_recorder.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import av
import numpy as np
import pytest

from peer.media.audio_mix import BLOCK_SAMPLES, AudioMix, is_native, to_samples
from peer.media.errors import MediaError
from peer.media.room_recorder import RoomRecorder
from peer.media.synthetic import SyntheticVideoTrack, ToneAudioTrack
from peer.media.tap import TrackTap
from tests.media.clips import audio_frame, remote
from tests.support import eventually, seconds


def _block(value: int, samples: int = BLOCK_SAMPLES) -> np.ndarray:
    return np.full((samples, 2), value, np.int16)


def test_the_mix_is_silence_when_nobody_speaks() -> None:
    mix = AudioMix()
    assert not mix.mix().any()


def test_the_mix_sums_tracks_after_their_prebuffer_and_clips() -> None:
    mix = AudioMix(capacity=4, prebuffer=2)
    a, b = remote("a", "audio"), remote("b", "audio")
    mix.push(a, _block(20_000))
    assert not mix.mix().any()  # a is still buffering
    mix.push(a, _block(20_000))
    mix.push(b, _block(100))
    mix.push(b, _block(100))
    block = mix.mix()
    assert block.shape == (BLOCK_SAMPLES, 2)
    assert (block == 20_100).all()
    assert (mix.mix() == 20_100).all()  # the second block of each
    mix.push(a, _block(-20_000))
    mix.push(b, _block(-20_000))
    assert (mix.mix() == -32768).all()  # -40 000 clipped
    assert mix.clipped == 1


def test_a_late_or_silent_track_does_not_stall_the_others() -> None:
    mix = AudioMix(capacity=3, prebuffer=1)
    a, b = remote("a", "audio"), remote("b", "audio")
    for _ in range(5):  # two more than b's buffer holds: the oldest two go
        mix.push(b, _block(7))
    assert mix.late == 2
    mix.push(a, _block(1))
    assert (mix.mix() == 8).all()
    # a has nothing now: b alone plays, a is counted once and buffers again.
    assert (mix.mix() == 7).all()
    assert mix.underruns == 1
    assert (mix.mix() == 7).all()


def test_frames_are_cut_into_blocks_and_an_ended_track_plays_out_then_goes() -> None:
    mix = AudioMix(capacity=10, prebuffer=3)
    a = remote("a", "audio")
    mix.push(a, _block(5, 1500))  # one block and 540 samples
    mix.push(a, _block(5, 420))  # the second block
    mix.end(a)  # shorter than the prebuffer: plays all the same
    assert (mix.mix() == 5).all()
    assert (mix.mix() == 5).all()
    assert not mix.mix().any()
    assert mix.tracks() == []


def test_samples_of_other_rates_are_resampled_and_the_frame_is_left_alone() -> None:
    frame = audio_frame(0, samples=480, rate=24_000)
    before = bytes(frame.planes[0])
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=48_000)
    samples = np.concatenate(
        [
            to_samples(frame, resampler),
            to_samples(audio_frame(480, samples=480, rate=24_000), resampler),
        ]
    )
    assert samples.dtype == np.int16 and samples.shape[1] == 2
    assert 900 <= len(samples) <= 1920
    assert bytes(frame.planes[0]) == before
    same = audio_frame(0)
    assert np.array_equal(to_samples(same, None).reshape(1, -1), same.to_ndarray())
    mono = av.AudioFrame.from_ndarray(np.full((1, 960), 1000, np.int16), layout="mono")
    mono.sample_rate = 48_000
    assert not is_native(mono)
    with pytest.raises(MediaError):
        to_samples(mono, None)
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=48_000)
    assert to_samples(mono, resampler).shape == (960, 2)


def test_bad_settings_and_places_fail_cleanly(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="even"):
        RoomRecorder(tmp_path / "a.mkv", size=(641, 480))
    with pytest.raises(MediaError, match="frame rate"):
        RoomRecorder(tmp_path / "a.mkv", fps=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(MediaError, match="cannot write"):
        RoomRecorder(tmp_path / "file" / "room.mkv")


async def test_a_short_room_of_two_synthetic_peers(tmp_path: Path) -> None:
    path = tmp_path / "room.mkv"
    recorder = RoomRecorder(path, size=(320, 180), fps=10)
    started = time.monotonic()
    videos = [SyntheticVideoTrack(name, width=160, height=120, fps=15) for name in ("a", "b")]
    taps = [
        TrackTap(remote(name, kind), track, [recorder])
        for name, video in zip(("a", "b"), videos, strict=True)
        for kind, track in (("video", video), ("audio", ToneAudioTrack(name)))
    ]
    for tap in taps:
        tap.start()
    await eventually(lambda: recorder.mosaic.labels() == ["a", "b"], seconds(10), "two tiles")
    await asyncio.sleep(2.0 - (time.monotonic() - started))  # a 2 s recording
    for tap in taps:
        await tap.stop()
    result = await recorder.close()
    assert not result.failed
    assert abs(result.seconds - 2.0) < 0.1
    with av.open(str(path)) as container:
        assert container.duration is not None
        assert abs(container.duration / av.time_base - result.seconds) < 0.15
        frames = list(container.decode(video=0))
    assert abs(len(frames) - 20) <= 2
    assert (frames[-1].width, frames[-1].height) == (320, 180)
    recorder.put_frame(remote("c", "audio"), audio_frame(0))  # after close: ignored
