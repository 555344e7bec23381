"""The packet recorder (``Recorder()``'s default): encoded frames to Matroska as they came.

Packets made here with PyAV's libvpx and libopus, handed to the recorder the way the
agent's sinks hand it a remote track's encoded frames; the agent end to end is in
tests/peer/test_packet_recording.py.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from peer.media.packet_recorder import vp8_size
from peer.media.packets import EncodedFrame, is_keyframe
from peer.media.recorder import Recorder
from peer.media.timeline import RtpUnwrapper
from signaling.protocol import PeerId
from tests.media.clips import (
    decoded,
    decoded_counts,
    demuxed,
    ffprobe_frames,
    h264_packets,
    opus_packets,
    remote,
    vp8_packets,
)
from tests.support import REPO, eventually, seconds

VIDEO_STEP = 3000  # 90 kHz ticks per frame at 30 fps
AUDIO_STEP = 960  # 48 kHz ticks per 20 ms Opus packet


def encoded(
    packets: list[av.Packet], kind: str, start: float, first: int = 0
) -> list[EncodedFrame]:
    """``packets`` as a remote track's encoded frames, arriving in real time from ``start``."""
    video = kind == "video"
    step, rate, period = (VIDEO_STEP, 90_000, 1 / 30) if video else (AUDIO_STEP, 48_000, 0.02)
    return [
        EncodedFrame(
            codec="VP8" if video else "opus",
            data=bytes(packet),
            timestamp=(first + i) * step,
            clock_rate=rate,
            keyframe=packet.is_keyframe if video else True,
            arrival=start + (first + i) * period,
        )
        for i, packet in enumerate(packets)
    ]


def interleave(*tracks: tuple[object, list[EncodedFrame]]) -> list[tuple[object, EncodedFrame]]:
    """The frames of several tracks in arrival order."""
    merged = [(track, frame) for track, frames in tracks for frame in frames]
    return sorted(merged, key=lambda item: item[1].arrival)


def test_vp8_size_reads_keyframes_only() -> None:
    key, delta = vp8_packets(2, size=(176, 144))
    assert vp8_size(bytes(key)) == (176, 144)
    assert vp8_size(bytes(delta)) is None


def annex_b_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B access unit (split at 00 00 01 / 00 00 00 01)."""
    units = re.split(b"\x00\x00\x00\x01|\x00\x00\x01", data)
    return [unit.rstrip(b"\x00") for unit in units if unit]


def avcc_units(data: bytes) -> list[bytes]:
    """The NAL units of a length-prefixed (4 bytes) access unit."""
    units = []
    while data:
        size = int.from_bytes(data[:4], "big")
        units.append(data[4 : 4 + size].rstrip(b"\x00"))
        data = data[4 + size :]
    return units


async def test_h264_access_units_go_in_as_they_came(tmp_path: Path) -> None:
    assert "libx264" in av.codecs_available, "PyAV's FFmpeg has no libx264 to make H.264"
    made = h264_packets(45, size=(352, 288))
    recorder = Recorder(tmp_path)
    camera = remote(PeerId("h264"), "video")
    recorder.expect(camera.peer, {"video"})
    start = time.monotonic()
    frames = [
        EncodedFrame(
            "H264", bytes(p), i * VIDEO_STEP, 90_000, is_keyframe("H264", bytes(p)), start + i / 30
        )
        for i, p in enumerate(made)
    ]
    assert frames[0].keyframe and not frames[1].keyframe
    for frame in frames:
        recorder.put_packet(camera, frame)
    (path,) = await asyncio.wait_for(recorder.close(), seconds(20))
    # Matroska keeps H.264 with length prefixes instead of start codes: the same NAL units.
    assert [avcc_units(bytes(p)) for p in demuxed(path)[0]] == [
        annex_b_units(f.data) for f in frames
    ]
    (stream,) = ffprobe_frames(path)
    assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", 352, 288)
    assert decoded_counts(path) == {0: 45}


def test_rtp_timestamps_unwrap_across_the_32_bit_edge() -> None:
    unwrapper = RtpUnwrapper()
    stamps = [2**32 - 6000, 2**32 - 3000, 0, 3000, 1500, 6000]  # a wrap, then a step back
    assert [unwrapper.unwrap(s) for s in stamps] == [0, 3000, 6000, 9000, 7500, 12000]


async def test_packets_go_into_the_file_byte_for_byte(tmp_path: Path) -> None:
    """What a receiver got is what the file holds: the VP8 frames from the first keyframe
    (the ones before it are left out), the Opus packets, timed by their RTP clocks."""
    recorder = Recorder(tmp_path, session="room1")
    peer = PeerId("bob")
    video, audio = remote(peer, "video"), remote(peer, "audio")
    recorder.expect(peer, {"audio", "video"})
    recorder.track_started(video)
    recorder.track_started(audio)
    vp8_made, opus_made = vp8_packets(75, keyframe_every=30), opus_packets(125)
    start = time.monotonic()  # arrivals from now: encoding took its time on a busy machine
    vp8 = encoded(vp8_made, "video", start)
    opus = encoded(opus_made, "audio", start)
    # Joined mid-stream: frames 20-29, then the keyframe at 30 (the one a PLI brings).
    for track, frame in interleave((video, vp8[20:]), (audio, opus)):
        recorder.put_packet(track, frame)  # type: ignore[arg-type]
    recorder.track_ended(video)
    recorder.track_ended(audio)
    path = await asyncio.wait_for(recorder.close_peer(peer), seconds(20))
    assert path is not None and path.name.startswith("room1-bob-") and path.suffix == ".mkv"

    sent_video = [f.data for f in vp8[30:]]  # vp8[20:30] come before the keyframe at 30
    packets = demuxed(path)
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        assert container.streams.video[0].codec_context.name == "vp8"
        assert container.streams.audio[0].codec_context.name == "opus"
        assert (container.streams.video[0].width, container.streams.video[0].height) == (320, 240)
    assert [bytes(p) for p in packets[0]] == sent_video
    assert packets[0][0].is_keyframe
    assert [bytes(p) for p in packets[1]] == [f.data for f in opus]
    video_seconds = [float(p.pts * p.time_base) for p in packets[0]]
    assert video_seconds[-1] - video_seconds[0] == pytest.approx(44 / 30, abs=0.002)
    assert video_seconds[0] == pytest.approx(1.0, abs=0.002)  # where frame 30 is on the RTP clock

    streams = ffprobe_frames(path)
    assert [int(str(s["nb_read_frames"])) for s in streams] == [45, 125]
    assert decoded_counts(path) == {0: 45, 1: 125}
    assert await recorder.close() == [path]


async def test_every_video_track_is_a_stream_and_sizes_change_in_place(tmp_path: Path) -> None:
    """A camera that drops its resolution and a screen share that started with it: one
    file, two video streams, the camera's keyframe at the new size kept as it came."""
    recorder = Recorder(tmp_path)
    peer = PeerId("chrome")
    camera, share, mic = remote(peer, "video"), remote(peer, "video", 1), remote(peer, "audio")
    recorder.expect(peer, {"audio", "video"})
    for track in (camera, share, mic):
        recorder.track_started(track)
    big = vp8_packets(30, size=(320, 240))
    small = vp8_packets(30, size=(160, 120), first=30)
    shared = vp8_packets(58, size=(640, 360), keyframe_every=20)
    sound = opus_packets(100)
    start = time.monotonic()
    camera_frames = encoded(big + small, "video", start)
    share_frames = encoded(shared, "video", start + 0.01)
    mic_frames = encoded(sound, "audio", start)
    for track, frame in interleave(
        (camera, camera_frames), (share, share_frames), (mic, mic_frames)
    ):
        recorder.put_packet(track, frame)  # type: ignore[arg-type]
    (path,) = await asyncio.wait_for(recorder.close(), seconds(20))

    with av.open(str(path)) as container:
        assert [(s.type, s.metadata.get("title")) for s in container.streams] == [
            ("video", "video 0"),
            ("video", "video 1"),
            ("audio", "audio 0"),
        ]
    frames = decoded(path)
    sizes = {
        i: {(f.width, f.height) for f in frames[i] if isinstance(f, av.VideoFrame)} for i in (0, 1)
    }
    assert sizes == {0: {(320, 240), (160, 120)}, 1: {(640, 360)}}
    counts = {index: len(found) for index, found in frames.items()}
    assert counts == {0: 60, 1: 58, 2: 100}
    assert counts[1] >= 0.9 * counts[0]


async def test_a_track_that_comes_later_goes_on_in_the_next_segment(tmp_path: Path) -> None:
    """A screen share started once the file is written: the next file (``-part2``) has a
    stream for every track; the camera goes on in it from the keyframe it asked for."""
    recorder = Recorder(tmp_path)
    asked: list[str] = []
    peer = PeerId("ann")
    camera = remote(peer, "video", keyframe=lambda: asked.append("camera"))
    mic, share = remote(peer, "audio"), remote(peer, "video", 1)
    recorder.expect(peer, {"audio", "video"})
    recorder.track_started(camera)
    recorder.track_started(mic)
    made = vp8_packets(90, keyframe_every=35), opus_packets(150), vp8_packets(30, size=(640, 360))
    start = time.monotonic()
    camera_frames = encoded(made[0], "video", start)
    mic_frames = encoded(made[1], "audio", start)
    share_frames = encoded(made[2], "video", start, first=60)
    for track, frame in interleave((camera, camera_frames[:60]), (mic, mic_frames[:100])):
        recorder.put_packet(track, frame)  # type: ignore[arg-type]
    await eventually(recorder.files, seconds(10), "the first file open")
    recorder.track_started(share)
    rest = interleave((camera, camera_frames[60:]), (mic, mic_frames[100:]), (share, share_frames))
    for track, frame in rest:
        recorder.put_packet(track, frame)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the keyframe request is made on the loop
    first, second = await asyncio.wait_for(recorder.close(), seconds(20))
    assert second.name == first.name.replace(".mkv", "-part2.mkv")
    # Up to the share's first frame (2.0 s) in the first file: camera 0-60, mic 0-100.
    assert decoded_counts(first) == {0: 61, 1: 101}
    with av.open(str(second)) as container:
        titles = [s.metadata.get("title") for s in container.streams]
    assert titles == ["video 0", "video 1", "audio 0"]
    packets = demuxed(second)
    assert [bytes(p) for p in packets[0]] == [f.data for f in camera_frames[70:]]  # keyframe 70
    assert [bytes(p) for p in packets[1]] == [f.data for f in share_frames]
    assert [bytes(p) for p in packets[2]] == [f.data for f in mic_frames[101:]]
    assert decoded_counts(second) == {0: 20, 1: 30, 2: 49}
    assert asked == ["camera"]


def test_a_killed_recorder_leaves_a_file_that_plays_to_its_last_second(tmp_path: Path) -> None:
    """SIGKILL: no trailer, no finishing thread; the clusters flushed so far still play."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.media.record_packets_until_killed", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "recording"  # 3 s handed to it
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=seconds(10))
    finally:
        process.kill()
        process.wait()
    (path,) = tmp_path.glob("*.mkv")
    streams = ffprobe_frames(path, cut=True)
    assert [s["codec_name"] for s in streams] == ["vp8", "opus"]
    counts = decoded_counts(path)
    # 3 s handed over: the last second may be lost, and the writer may lag a busy machine.
    assert counts[0] >= 1.5 * 30
    assert counts[1] >= 1.5 * 50
    assert [int(str(s["nb_read_frames"])) for s in streams] == [counts[0], counts[1]]


def visit_idle(recorder: Recorder, peer: PeerId) -> bool:
    """The peer's writer has taken everything queued."""
    return recorder._active[peer]._queue.empty()


async def test_a_full_queue_drops_video_up_to_the_next_keyframe(tmp_path: Path) -> None:
    """Packets handed over in bursts of 12, faster than the writer takes them (a queue of
    8): the dropped ones are counted, video resumes only at a keyframe (asked for), so what
    is in the file still decodes without an error."""
    recorder = Recorder(tmp_path, queue_size=8)
    asked: list[int] = []
    peer = PeerId("fast")
    camera = remote(peer, "video", keyframe=lambda: asked.append(1))
    recorder.expect(peer, {"video"})
    recorder.track_started(camera)
    made = vp8_packets(300, keyframe_every=30)
    start = time.monotonic()
    for index, frame in enumerate(encoded(made, "video", start)):
        recorder.put_packet(camera, frame)
        if index % 12 == 11:  # between bursts the writer catches up
            await eventually(lambda: visit_idle(recorder, peer), seconds(5), "the queue empty")
    visit = recorder._active[peer]
    dropped = visit.dropped["video"]
    (path,) = await asyncio.wait_for(recorder.close(), seconds(20))
    kept = demuxed(path)[0]
    assert dropped > 0 and asked and len(kept) + dropped <= 300
    gaps = sum(1 for p in kept[1:] if p.is_keyframe)
    assert gaps >= 5  # video came back at the keyframe after each loss
    assert kept[0].is_keyframe
    by_data = {f.data: i for i, f in enumerate(encoded(made, "video", start))}
    indices = [by_data[bytes(p)] for p in kept]
    for before, after in itertools.pairwise(indices):  # a gap ends on a keyframe
        assert after == before + 1 or after % 30 == 0, (before, after)
    print(f"\n{dropped} of 300 dropped, {len(kept)} kept, {len(asked)} keyframes asked for")
    ffprobe_frames(path)  # no decoding error
    assert decoded_counts(path) == {0: len(kept)}
