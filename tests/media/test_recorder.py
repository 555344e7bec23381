"""The transcoding Recorder (``transcode=True``): one synchronised audio+video file per peer
and visit, robust to bad input."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

from peer.media.errors import MediaError
from peer.media.recorder import Recorder
from peer.media.synthetic import SyntheticVideoTrack, ToneAudioTrack
from peer.media.tap import TrackTap
from peer.media.transcode_recorder import TranscodingVisit, _Muxer, recording_format
from signaling.protocol import PeerId
from tests.media.clips import (
    FramesTrack,
    audio_frame,
    decode_audio,
    decode_video,
    oversized_frame,
    remote,
    video_frame,
)
from tests.support import interruptible, seconds

REPO = Path(__file__).resolve().parents[2]
VIDEO_90K = Fraction(1, 90_000)


def _strictly_increasing(values: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


def _duration(frames: list[av.AudioFrame] | list[av.VideoFrame], period: float) -> float:
    times = [f.time for f in frames if f.time is not None]
    return max(times) + period - min(times)


def _retained(directory: Path) -> tuple[int, int]:
    """Visits and muxers of recordings into ``directory`` that are still in memory."""
    gc.collect()
    objects = gc.get_objects()
    visits = sum(
        1 for o in objects if isinstance(o, TranscodingVisit) and o.path.parent == directory
    )
    muxers = sum(
        1 for o in objects if isinstance(o, _Muxer) and Path(o.container.name).parent == directory
    )
    return visits, muxers


def test_the_format_needs_no_external_binary() -> None:
    fmt = recording_format()
    assert fmt.suffix == ".mkv"
    assert fmt.video_codec in av.codecs_available
    assert fmt.audio_codec in av.codecs_available


async def test_recording_of_real_tracks_through_taps(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, session="room1", transcode=True)
    peer = PeerId("bob")
    recorder.expect(peer, {"audio", "video"})
    video = SyntheticVideoTrack("bob", width=320, height=240, fps=30)
    audio = ToneAudioTrack("bob")
    taps = [
        TrackTap(remote(peer, "video"), video, [recorder]),
        TrackTap(remote(peer, "audio"), audio, [recorder]),
    ]
    for tap in taps:
        tap.start()
    deadline = time.monotonic() + seconds(20)
    while video.frames < 45:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    for tap in taps:
        await tap.stop()
    path = await asyncio.wait_for(recorder.close_peer(peer), seconds(20))
    assert path is not None
    assert path.name.startswith("room1-bob-")
    assert path.suffix == ".mkv"
    assert recorder.files() == [path]

    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1
        assert len(container.streams.audio) == 1
    frames = decode_video(path)
    assert abs(len(frames) - taps[0].frames) <= 2  # about as many as were put
    assert _strictly_increasing([f.pts for f in frames])
    assert {(f.width, f.height) for f in frames} == {(320, 240)}
    sound = decode_audio(path)
    assert _strictly_increasing([f.pts for f in sound])
    video_seconds = _duration(frames, 1 / 30)
    audio_seconds = sum(f.samples for f in sound) / 48_000
    assert video_seconds > 1.2
    assert audio_seconds == pytest.approx(video_seconds, abs=0.25)
    assert await recorder.close() == [path]
    video.stop()
    audio.stop()


async def test_non_monotonic_timestamps_and_a_resolution_change_still_decode(
    tmp_path: Path,
) -> None:
    recorder = Recorder(tmp_path, queue_size=1000, transcode=True)
    peer = PeerId("chrome")
    recorder.expect(peer, {"audio", "video"})
    video_pts = [i * 3000 for i in range(60)]
    video_pts[10], video_pts[11] = video_pts[11], video_pts[10]  # reordered
    video_pts[20] = video_pts[19]  # duplicated
    video_pts[30] = 0  # far in the past
    sizes = [(640, 480)] * 20 + [(320, 240)] * 20 + [(480, 270)] * 20
    for i in range(100):
        recorder.put_frame(remote(peer, "audio"), audio_frame(i * 960 if i != 50 else 0))
        if i < 60:
            frame = video_frame(*sizes[i], pts=video_pts[i], time_base=VIDEO_90K)
            recorder.put_frame(remote(peer, "video"), frame)
    path = await asyncio.wait_for(recorder.close_peer(peer), seconds(20))
    assert path is not None
    frames = decode_video(path)
    assert len(frames) >= 55  # the frame from the past is dropped, the others repaired
    assert _strictly_increasing([f.pts for f in frames])
    assert {(f.width, f.height) for f in frames} == {(640, 480)}  # rescaled to one size
    sound = decode_audio(path)
    assert _strictly_increasing([f.pts for f in sound])
    assert sum(f.samples for f in sound) / 48_000 == pytest.approx(2.0, abs=0.1)


async def test_a_peer_that_rejoins_gets_a_second_file(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, queue_size=1000, transcode=True)
    peer = PeerId("alice")
    paths = []
    for visit in range(2):
        recorder.expect(peer, {"audio", "video"})
        for i in range(30):
            recorder.put_frame(
                remote(peer, "video"), video_frame(160, 120, pts=i * 3000, time_base=VIDEO_90K)
            )
            recorder.put_frame(remote(peer, "audio"), audio_frame(i * 960))
        if visit == 0:  # the first visit ends with its tracks, the second with peer-left
            recorder.track_ended(remote(peer, "video"))
            recorder.track_ended(remote(peer, "audio"))
        paths.append(await asyncio.wait_for(recorder.close_peer(peer), seconds(20)))
    first, second = paths
    assert first is not None and second is not None and first != second
    assert recorder.files() == [first, second]
    for path in (first, second):
        assert len(decode_video(path)) == 30
        assert decode_audio(path)
    assert await recorder.close() == [first, second]


async def test_close_finalises_every_peer_and_ignores_later_frames(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, queue_size=1000, transcode=True)
    for name in ("p1", "p2"):
        for i in range(10):
            frame = video_frame(160, 120, pts=i * 3000, time_base=VIDEO_90K)
            recorder.put_frame(remote(name, "video"), frame)
    files = await asyncio.wait_for(recorder.close(), seconds(20))
    assert len(files) == 2
    for path in files:
        with av.open(str(path)) as container:  # video only: no audio ever came
            assert len(container.streams.audio) == 0
        assert len(decode_video(path)) == 10
    recorder.put_frame(remote("p3", "video"), video_frame(160, 120, pts=0, time_base=VIDEO_90K))
    assert recorder.files() == files


def test_ctrl_c_finalises_the_file(tmp_path: Path) -> None:
    process = subprocess.Popen(
        # -X faulthandler: a hang past Ctrl-C is reported with every thread's stack (SIGABRT).
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-m",
            "tests.media.record_until_interrupted",
            str(tmp_path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "recording"
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=seconds(30))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            _, stacks = process.communicate(timeout=seconds(10))
            pytest.fail(f"the recorder did not exit 30 s after Ctrl-C; its threads:\n{stacks}")
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, stderr
    (path,) = tmp_path.glob("*.mkv")
    with av.open(str(path)) as container:
        assert container.duration is not None  # written by the finalising trailer only
        assert container.duration > 0.5 * av.time_base
    assert len(decode_video(path)) >= 15


async def test_unwritable_places_fail_cleanly(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(MediaError, match="cannot create the recording directory"):
        Recorder(blocker / "recordings")
    directory = tmp_path / "gone"
    recorder = Recorder(directory, queue_size=1000, transcode=True)
    directory.rmdir()  # the file cannot be opened any more
    peer = PeerId("bob")
    for i in range(40):
        recorder.put_frame(
            remote(peer, "video"), video_frame(160, 120, pts=i * 3000, time_base=VIDEO_90K)
        )
    assert await asyncio.wait_for(recorder.close_peer(peer), seconds(20)) is None
    assert await recorder.close() == []


async def test_frames_shared_with_other_consumers_are_not_modified(tmp_path: Path) -> None:
    # A relay hands the same frame objects to the recorder and to aiortc's encoder (an
    # echo bot that records): the recorder must leave their timing and pixels as they were.
    recorder = Recorder(tmp_path, queue_size=1000, transcode=True)
    peer = PeerId("echo")
    recorder.expect(peer, {"audio", "video"})
    given: list[tuple[av.AudioFrame | av.VideoFrame, int | None, Fraction | None, bytes]] = []
    for i in range(60):  # 1.2 s: audio every 20 ms, video every 40 ms
        sound = audio_frame(480_000 + i * 960)  # s16 stereo 48 kHz: what the encoder takes as is
        given.append((sound, sound.pts, sound.time_base, bytes(sound.planes[0])))
        recorder.put_frame(remote(peer, "audio"), sound)
        if i % 2 == 0:
            size = (320, 240) if i < 40 else (160, 120)  # the last ones are scaled
            picture = video_frame(*size, pts=900_000 + i * 1800, time_base=VIDEO_90K)
            given.append((picture, picture.pts, picture.time_base, bytes(picture.planes[0])))
            recorder.put_frame(remote(peer, "video"), picture)
    path = await asyncio.wait_for(recorder.close_peer(peer), seconds(20))
    assert path is not None
    for frame, pts, time_base, pixels in given:
        assert (frame.pts, frame.time_base) == (pts, time_base), frame
        assert bytes(frame.planes[0]) == pixels, frame

    frames = decode_video(path)
    assert len(frames) == 30
    assert _strictly_increasing([f.pts for f in frames])
    assert {(f.width, f.height) for f in frames} == {(320, 240)}
    assert _duration(frames, 0.04) == pytest.approx(1.2, abs=0.05)
    sound_out = decode_audio(path)
    assert _strictly_increasing([f.pts for f in sound_out])
    assert sum(f.samples for f in sound_out) / 48_000 == pytest.approx(1.2, abs=0.05)
    await recorder.close()


async def test_visits_that_ended_are_released(tmp_path: Path) -> None:
    # Peers that come and go: the recorder keeps their file names, not their visits.
    recorder = Recorder(tmp_path, queue_size=1000, transcode=True)
    ann, ben = PeerId("ann"), PeerId("ben")
    paths: list[Path] = []
    for _ in range(12):
        for peer in (ann, ben):
            recorder.expect(peer, {"video"})
            for i in range(5):
                frame = video_frame(160, 120, pts=i * 3000, time_base=VIDEO_90K)
                recorder.put_frame(remote(peer, "video"), frame)
        path = await asyncio.wait_for(recorder.close_peer(ann), seconds(20))  # peer-left
        assert path is not None
        paths.append(path)
        recorder.track_ended(
            remote(ben, "video")
        )  # ben's track ends: his next frame is a new visit
        deadline = time.monotonic() + seconds(5)
        while max(retained := _retained(tmp_path)) > 2:  # ben's last two at most
            assert time.monotonic() < deadline, f"visits and muxers still held: {retained}"
            await asyncio.sleep(0.02)
    files = await asyncio.wait_for(recorder.close(), seconds(20))
    assert len(files) == 24 == len(set(files))
    assert set(paths) < set(files)
    assert recorder.files() == files
    assert _retained(tmp_path) == (0, 0)
    for path in files:
        assert len(decode_video(path)) == 5


async def test_close_peer_returns_a_file_whose_visit_was_already_released(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path, queue_size=1000, transcode=True)
    ann, ben = PeerId("ann"), PeerId("ben")
    for i in range(5):
        recorder.put_frame(
            remote(ann, "video"), video_frame(160, 120, pts=i * 3000, time_base=VIDEO_90K)
        )
    recorder.track_ended(remote(ann, "video"))
    deadline = time.monotonic() + seconds(10)
    while any(thread.name == "recorder ann" for thread in threading.enumerate()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    recorder.put_frame(remote(ben, "video"), video_frame(160, 120, pts=0, time_base=VIDEO_90K))
    assert _retained(tmp_path)[0] == 1  # ben's visit only: ann's was released
    path = await asyncio.wait_for(recorder.close_peer(ann), seconds(20))  # peer-left
    assert path is not None
    assert path.name.startswith("ann-")
    assert await recorder.close_peer(ann) is None  # reported once
    assert len(await asyncio.wait_for(recorder.close(), seconds(20))) == 2


async def test_oversized_pictures_are_left_out_and_the_rest_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A remote track's pictures over MAX_FRAME_PIXELS would cost tens of MB each in the
    queue and the encoder: they are left out with one warning, the others are recorded."""
    caplog.set_level(logging.WARNING)
    recorder = Recorder(tmp_path, transcode=True)
    peer = PeerId("huge")
    frames = [
        oversized_frame(i * 3000)
        if i % 2 == 0
        else video_frame(320, 240, pts=i * 3000, time_base=VIDEO_90K)
        for i in range(40)
    ]
    tap = TrackTap(remote(peer), FramesTrack(frames), [recorder])
    tap.start()
    await asyncio.wait_for(tap.wait_ended(), seconds(20))
    path = await asyncio.wait_for(recorder.close_peer(peer), seconds(20))
    assert path is not None
    video = decode_video(path)
    assert {(f.width, f.height) for f in video} == {(320, 240)}
    assert len(video) == 20
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "4096x2304" in warnings[0], warnings
