"""Media fixtures made on the spot with PyAV, frame builders for the media tests, and
decoding what a recording holds."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.events import Kind, RemoteTrack
from signaling.protocol import PeerId


def remote(
    peer: str, kind: Kind = "video", index: int = 0, *, keyframe: Callable[[], None] | None = None
) -> RemoteTrack:
    """A remote track of ``peer`` to hand to a consumer directly (a new object each call);
    ``keyframe`` is what its ``request_keyframe`` calls."""
    return RemoteTrack(
        PeerId(peer), kind, id=f"{peer}-{kind}-{index}", index=index, keyframe=keyframe
    )


def make_clip(
    path: Path,
    *,
    seconds: float = 1.0,
    fps: int = 30,
    size: tuple[int, int] = (320, 240),
    tone_hz: int = 440,
) -> Path:
    """A short Matroska clip with MPEG-4 video (a moving bar) and AAC audio (a tone)."""
    with av.open(str(path), "w", format="matroska") as container:
        video = container.add_stream("mpeg4", rate=fps)
        assert isinstance(video, av.VideoStream)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=48_000)
        assert isinstance(audio, av.AudioStream)
        audio.layout = "mono"
        for index in range(round(seconds * fps)):
            image = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            image[:, (index * 8) % size[0] :][:, :8] = 255
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
        samples = np.arange(round(seconds * 48_000))
        wave = (np.sin(2 * np.pi * tone_hz * samples / 48_000) * 0.3).astype(np.float32)
        for start in range(0, len(wave), 1024):
            chunk = wave[start : start + 1024].reshape(1, -1)
            aframe = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            aframe.sample_rate = 48_000
            aframe.pts = start
            aframe.time_base = Fraction(1, 48_000)
            container.mux(audio.encode(aframe))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path


def video_frame(
    width: int, height: int, *, pts: int, time_base: Fraction, value: int = 128
) -> av.VideoFrame:
    """A yuv420p frame with a frame number written on it."""
    image = np.full((height, width, 3), value, dtype=np.uint8)
    cv2.putText(image, str(pts), (8, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255))
    yuv = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
    frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
    frame.pts = pts
    frame.time_base = time_base
    return frame


def audio_frame(pts: int, *, samples: int = 960, rate: int = 48_000) -> av.AudioFrame:
    """20 ms of s16 stereo, the shape aiortc's Opus decoder delivers."""
    t = (np.arange(samples) + pts) / rate
    mono = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2).reshape(1, -1), layout="stereo")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


def decode_video(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def decode_audio(path: Path) -> list[av.AudioFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(audio=0))


def decoded_frames(path: Path) -> dict[str, int]:
    """Decode the whole file: frames per kind, and the video size."""
    counts = {"video": 0, "audio": 0, "width": 0, "height": 0}
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                counts["video"] += 1
                counts["width"], counts["height"] = frame.width, frame.height
            else:
                counts["audio"] += 1
    return counts


class FramesTrack(MediaStreamTrack):
    """A remote-like video track that yields ``frames`` at ``fps``, then ends."""

    kind = "video"

    def __init__(self, frames: list[av.VideoFrame], fps: int = 30) -> None:
        super().__init__()
        self._frames = iter(frames)
        self._period = 1 / fps

    async def recv(self) -> av.VideoFrame:
        await asyncio.sleep(self._period)
        frame = next(self._frames, None)
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame


def oversized_frame(pts: int, *, time_base: Fraction = Fraction(1, 90_000)) -> av.VideoFrame:
    """A 4096x2304 frame (4096 * 2304 pixels is over 3840 * 2160), almost white."""
    frame = av.VideoFrame(4096, 2304, "yuv420p")
    for plane, value in zip(frame.planes, (235, 128, 128), strict=True):
        np.frombuffer(memoryview(plane), np.uint8)[:] = value
    frame.pts = pts
    frame.time_base = time_base
    return frame


def vp8_packets(
    count: int, *, size: tuple[int, int] = (320, 240), keyframe_every: int = 0, first: int = 0
) -> list[av.Packet]:
    """``count`` VP8 frames of a numbered picture, encoded with aiortc's libvpx settings
    (realtime, CBR); a keyframe first and every ``keyframe_every`` frames (0: first only)."""
    encoder = av.CodecContext.create("libvpx", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height = size
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, 90_000)
    encoder.bit_rate = 500_000
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    packets: list[av.Packet] = []
    for index in range(first, first + count):
        pts, shade = index * 3000, index % 256
        frame = video_frame(*size, pts=pts, time_base=Fraction(1, 90_000), value=shade)
        if keyframe_every and index % keyframe_every == 0:
            frame.pict_type = av.video.frame.PictureType.I
        packets.extend(encoder.encode(frame))
    packets.extend(encoder.encode(None))
    return packets


def h264_packets(count: int, *, size: tuple[int, int] = (320, 240)) -> list[av.Packet]:
    """``count`` H.264 access units (Annex B, as aiortc depacketizes them) of a numbered
    picture from libx264, a keyframe (SPS, PPS, IDR) first."""
    encoder = av.CodecContext.create("libx264", "w")
    assert isinstance(encoder, av.VideoCodecContext)
    encoder.width, encoder.height = size
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, 90_000)
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency"}
    packets: list[av.Packet] = []
    for index in range(count):
        pts, shade = index * 3000, index % 256
        packets.extend(
            encoder.encode(video_frame(*size, pts=pts, time_base=Fraction(1, 90_000), value=shade))
        )
    packets.extend(encoder.encode(None))
    return packets


def opus_packets(count: int) -> list[av.Packet]:
    """``count`` Opus packets of 20 ms of a tone, 48 kHz stereo."""
    encoder = av.CodecContext.create("libopus", "w")
    assert isinstance(encoder, av.AudioCodecContext)
    encoder.sample_rate = 48_000
    encoder.layout = "stereo"
    encoder.format = "s16"
    encoder.time_base = Fraction(1, 48_000)
    packets: list[av.Packet] = []
    for index in range(count + 4):
        packets.extend(encoder.encode(audio_frame(index * 960)))
    return packets[:count]


def demuxed(path: Path) -> dict[int, list[av.Packet]]:
    """Every packet of the file, by stream index (flush packets left out)."""
    with av.open(str(path)) as container:
        found: dict[int, list[av.Packet]] = {s.index: [] for s in container.streams}
        for packet in container.demux():
            if packet.size:
                found[packet.stream.index].append(packet)
        return found


def ffprobe_frames(path: Path, *, cut: bool = False) -> list[dict[str, object]]:
    """ffprobe decodes every stream of ``path`` to the end: its streams with frame counts.
    Nothing on stderr, but for a file ``cut`` short (a killed recorder) the one notice."""
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-count_frames",
            "-print_format",
            "json",
            "-show_streams",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    notices = [line for line in probe.stderr.splitlines() if "File ended prematurely" not in line]
    assert notices == [] and (cut or probe.stderr == ""), probe.stderr
    streams: list[dict[str, object]] = json.loads(probe.stdout)["streams"]
    return streams


def decoded(path: Path) -> dict[int, list[av.VideoFrame | av.AudioFrame]]:
    """PyAV decodes every stream of ``path`` to the end: the frames, by stream index."""
    with av.open(str(path)) as container:
        found: dict[int, list[av.VideoFrame | av.AudioFrame]] = {
            s.index: [] for s in container.streams
        }
        for packet in container.demux():
            found[packet.stream.index].extend(packet.decode())  # type: ignore[arg-type]
    return found


def decoded_counts(path: Path) -> dict[int, int]:
    return {index: len(frames) for index, frames in decoded(path).items()}
