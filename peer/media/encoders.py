"""Encoders that turn frames into ``av.Packet``s, for aiortc senders to packetize as they are.

aiortc's own encoders (``aiortc.codecs``) return RTP payloads for one sender; these return
the encoded packets themselves, so one encode serves every connection (``fanout``). The
settings are aiortc's (VP8: realtime, CBR, ``cpu-used -6``; H.264: baseline,
zerolatency; Opus: 48 kHz stereo, voip), with one difference measured in
``benchmarks/encoder_cost.py``: libvpx's temporal denoiser is off by default.

Each encoder is driven from one thread at a time (the fan-out's encoding thread), and
never changes the frames it is given: other encoders may be reading them.
"""

from __future__ import annotations

import fractions
import multiprocessing
from dataclasses import dataclass
from typing import Any

import av
from aiortc.codecs import h264, vpx
from av.audio.resampler import AudioResampler

__all__ = [
    "AudioEncoder",
    "BitrateBounds",
    "UnsupportedCodec",
    "VideoEncoder",
    "Vp8Settings",
    "bounds_for",
    "encodes",
    "make_encoder",
]

AUDIO_RATE = 48_000
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
AUDIO_FRAME_SAMPLES = 960  # 20 ms, as aiortc sends
MAX_FRAME_RATE = 30  # aiortc's H.264 encoder clock


class UnsupportedCodec(ValueError):
    """A negotiated codec this module does not encode (the connection encodes its own)."""


@dataclass(frozen=True)
class BitrateBounds:
    """aiortc's bounds for a codec: where it starts and how far REMB may move it."""

    initial: int
    low: int
    high: int


_BOUNDS = {
    "video/vp8": BitrateBounds(vpx.DEFAULT_BITRATE, vpx.MIN_BITRATE, vpx.MAX_BITRATE),
    "video/h264": BitrateBounds(h264.DEFAULT_BITRATE, h264.MIN_BITRATE, h264.MAX_BITRATE),
}


def bounds_for(mime_type: str) -> BitrateBounds | None:
    """None for codecs whose rate does not follow receivers (Opus)."""
    return _BOUNDS.get(mime_type.lower())


@dataclass(frozen=True)
class Vp8Settings:
    """The libvpx knobs that trade CPU for quality (see ``benchmarks/encoder_cost.py``).

    ``cpu_used`` -6 is aiortc's speed. ``noise_sensitivity`` 4 is aiortc's temporal
    denoiser: about a quarter of the encoder's time, worth it only on noisy cameras.
    """

    cpu_used: int = -6
    noise_sensitivity: int = 0

    def options(self, bitrate: int) -> dict[str, str]:
        """libvpx's options for ``bitrate`` bits per second (PyAV's ``codec_context.options``)."""
        return {
            "bufsize": str(bitrate),  # rc_buf_sz 1000 ms, as aiortc
            "cpu-used": str(self.cpu_used),
            "deadline": "realtime",
            "lag-in-frames": "0",
            "minrate": str(bitrate),  # minrate = maxrate = bit_rate: CBR
            "maxrate": str(bitrate),
            "noise-sensitivity": str(self.noise_sensitivity),
            "overshoot-pct": "15",
            "partitions": "0",
            "static-thresh": "1",
            "undershoot-pct": "100",
        }


class VideoEncoder:
    """VP8 (libvpx) or H.264 (libx264); a new bitrate or frame size restarts the context.

    libvpx takes no new rate once open through PyAV, so a rate change costs a keyframe,
    as in aiortc: callers change it rarely (``feedback.BitrateFollower``).
    """

    def __init__(self, mime_type: str, bitrate: int, vp8: Vp8Settings | None = None) -> None:
        self.mime_type = mime_type.lower()
        if self.mime_type not in _BOUNDS:
            raise UnsupportedCodec(mime_type)
        self.bitrate = bitrate
        self._vp8 = vp8 or Vp8Settings()
        self._context: av.VideoCodecContext | None = None
        self._context_rate = 0
        #: Contexts opened: the first, then one per size or rate change.
        self.restarts = 0

    def encode(self, frame: Any, keyframe: bool) -> list[av.Packet[Any]]:
        assert isinstance(frame, av.VideoFrame)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        context = self._context
        if context is None or (
            frame.width != context.width
            or frame.height != context.height
            or self.bitrate != self._context_rate
        ):
            context = self._context = self._open(frame.width, frame.height)
            keyframe = True
        picture = av.video.frame.PictureType
        wanted = picture.I if keyframe else picture.NONE
        if frame.pict_type != wanted:
            # Frames are shared (other codecs' encoders, the preview): mark a copy instead.
            copy = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
            copy.pts, copy.time_base = frame.pts, frame.time_base
            copy.pict_type = wanted
            frame = copy
        packets = list(context.encode(frame))
        if not packets:
            return []
        # One frame in, one packet out (no lag): join in case libvpx splits it.
        packet = packets[0] if len(packets) == 1 else av.Packet(b"".join(bytes(p) for p in packets))
        packet.pts = frame.pts
        packet.time_base = frame.time_base or fractions.Fraction(1, 90_000)
        return [packet]

    def _open(self, width: int, height: int) -> av.VideoCodecContext:
        rate = self.bitrate
        if self.mime_type == "video/vp8":
            context = av.CodecContext.create("libvpx", "w")
            context.gop_size = 3000  # keyframes only when asked
            context.qmin = 2
            context.qmax = 56
            context.options = self._vp8.options(rate)
            context.thread_count = vpx.number_of_threads(
                width * height, multiprocessing.cpu_count()
            )
        else:
            context = av.CodecContext.create("libx264", "w")
            context.framerate = fractions.Fraction(MAX_FRAME_RATE, 1)
            context.time_base = fractions.Fraction(1, MAX_FRAME_RATE)
            context.options = {"level": "31", "tune": "zerolatency"}
            context.profile = "Baseline"
        context.width = width
        context.height = height
        context.bit_rate = rate
        context.pix_fmt = "yuv420p"
        self._context_rate = rate
        self.restarts += 1
        assert isinstance(context, av.VideoCodecContext)
        return context


class AudioEncoder:
    """Opus, 48 kHz stereo, 20 ms packets, as aiortc's ``OpusEncoder``."""

    def __init__(self) -> None:
        context = av.CodecContext.create("libopus", "w")
        context.bit_rate = 96_000
        context.format = "s16"
        context.layout = "stereo"
        context.options = {"application": "voip"}
        context.sample_rate = AUDIO_RATE
        context.time_base = AUDIO_TIME_BASE
        assert isinstance(context, av.AudioCodecContext)
        self._context = context
        self._resampler = AudioResampler(
            format="s16", layout="stereo", rate=AUDIO_RATE, frame_size=AUDIO_FRAME_SAMPLES
        )
        self._first_pts: int | None = None
        self.bitrate = 96_000  # fixed: receivers' estimates concern video
        self.restarts = 1

    def encode(self, frame: Any, keyframe: bool) -> list[av.Packet[Any]]:
        assert isinstance(frame, av.AudioFrame)
        packets: list[av.Packet[Any]] = []
        for resampled in self._resampler.resample(frame):
            packets += self._context.encode(resampled)
        for packet in packets:
            pts = packet.pts or 0
            if self._first_pts is None:  # libopus starts below zero (its pre-skip)
                self._first_pts = pts
            packet.pts = pts - self._first_pts
            packet.time_base = AUDIO_TIME_BASE
        return packets


def encodes(mime_type: str) -> bool:
    """Whether ``make_encoder`` has an encoder for this codec."""
    return mime_type.lower() in _BOUNDS or mime_type.lower() == "audio/opus"


def make_encoder(
    mime_type: str, *, bitrate: int | None = None, vp8: Vp8Settings | None = None
) -> VideoEncoder | AudioEncoder:
    """The encoder for a negotiated codec; UnsupportedCodec for the ones we leave to aiortc."""
    kind = mime_type.lower()
    if kind == "audio/opus":
        return AudioEncoder()
    bounds = bounds_for(kind)
    if bounds is None:
        raise UnsupportedCodec(mime_type)
    return VideoEncoder(kind, bitrate or bounds.initial, vp8)
