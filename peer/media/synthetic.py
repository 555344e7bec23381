"""Synthetic sources: a moving test pattern and a tone, so bots need no camera or microphone.

Frames leave in the formats the encoders want (video yuv420p, audio s16 stereo 48 kHz):
with ``MediaRelay`` one frame is shared by every connection's encoder, and encoders that
each convert the same frame at once crashed the process (PITFALLS.md).
"""

from __future__ import annotations

import logging
import zlib
from datetime import datetime
from fractions import Fraction

import av
import cv2
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.media.pacing import FrameClock, Tick

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_RATE = 48_000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
AUDIO_FRAME_SAMPLES = 960  # 20 ms, aiortc's packetisation time

_LOWEST_TONE_HZ = 200
_TONE_STEPS_HZ = 601


def tone_frequency(label: str) -> int:
    """A stable pitch in [200, 800] Hz picked from ``label``, so peers are told apart by ear.

    Integer frequencies make one second of samples an exact loop.
    """
    return _LOWEST_TONE_HZ + zlib.crc32(label.encode()) % _TONE_STEPS_HZ


class SyntheticVideoTrack(MediaStreamTrack):
    """A moving test pattern showing ``label``, a frame counter and the wall-clock time.

    Drawing reuses preallocated arrays: per frame, one background copy, a few OpenCV
    primitives, one BGR->I420 conversion and the copy into the outgoing ``VideoFrame``.
    """

    kind = "video"

    def __init__(self, label: str, *, width: int, height: int, fps: int) -> None:
        super().__init__()
        self.label = label
        self.width = width
        self.height = height
        self.fps = fps
        self.frames = 0
        self._clock = FrameClock(fps, VIDEO_CLOCK_RATE)
        self._background = _test_card(width, height, label)
        self._canvas = np.empty_like(self._background)
        self._yuv = np.empty((height * 3 // 2, width), dtype=np.uint8)
        self._scale = height / 480

    async def recv(self) -> av.VideoFrame:
        tick = await next_tick(self, self._clock)
        frame = self.render(tick.index)
        frame.pts = tick.pts
        frame.time_base = VIDEO_TIME_BASE
        return frame

    def render(self, index: int) -> av.VideoFrame:
        """Frame ``index`` of the pattern, without pacing or timestamps (recv adds both)."""
        self._draw(index)
        cv2.cvtColor(self._canvas, cv2.COLOR_BGR2YUV_I420, dst=self._yuv)
        self.frames += 1
        return av.VideoFrame.from_ndarray(self._yuv, format="yuv420p")

    def _draw(self, index: int) -> None:
        canvas, width, height, scale = self._canvas, self.width, self.height, self._scale
        np.copyto(canvas, self._background)
        # A ball on a Lissajous path and a sweeping bar: motion that shows dropped frames.
        phase = index / self.fps
        x = int(width / 2 + width * 0.35 * np.sin(phase * 1.3))
        y = int(height / 2 + height * 0.25 * np.sin(phase * 2.1))
        cv2.circle(canvas, (x, y), max(4, int(28 * scale)), (40, 220, 255), -1, cv2.LINE_AA)
        bar = int(index * 4 * scale) % width
        band_top, band_bottom = int(64 * scale), height - int(48 * scale)  # keep text clear
        canvas[band_top:band_bottom, bar : bar + max(2, int(6 * scale))] = (255, 255, 255)
        text_scale = 0.9 * scale
        thickness = max(1, round(2 * scale))
        now = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        bottom = height - int(16 * scale)
        cv2.putText(
            canvas,
            f"#{self.frames:06d}  {now}",
            (int(12 * scale), bottom),
            cv2.FONT_HERSHEY_SIMPLEX,
            text_scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )


def _test_card(width: int, height: int, label: str) -> npt.NDArray[np.uint8]:
    """The static part of the pattern: colour bars, a grey ramp and the label, drawn once."""
    card = np.zeros((height, width, 3), dtype=np.uint8)
    bars = [
        (192, 192, 192),
        (0, 192, 192),
        (192, 192, 0),
        (0, 192, 0),
        (192, 0, 192),
        (0, 0, 192),
        (192, 0, 0),
    ]
    bar_height = height * 2 // 3
    for i, colour in enumerate(bars):
        card[:bar_height, i * width // len(bars) : (i + 1) * width // len(bars)] = colour
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    card[bar_height:, :, :] = ramp[np.newaxis, :, np.newaxis]
    scale = height / 480
    cv2.rectangle(card, (0, 0), (width, int(64 * scale)), (32, 32, 32), -1)
    cv2.rectangle(card, (0, height - int(48 * scale)), (width, height), (32, 32, 32), -1)
    cv2.putText(
        card,
        label,
        (int(12 * scale), int(46 * scale)),
        cv2.FONT_HERSHEY_SIMPLEX,
        1.4 * scale,
        (255, 255, 255),
        max(1, round(3 * scale)),
        cv2.LINE_AA,
    )
    return card


class ToneAudioTrack(MediaStreamTrack):
    """A sine tone at ``frequency`` Hz (default ``tone_frequency(label)``), 20 ms frames of
    s16 stereo at 48 kHz. An integer frequency makes one second an exact loop."""

    kind = "audio"

    def __init__(self, label: str, *, amplitude: float = 0.2, frequency: int | None = None) -> None:
        super().__init__()
        self.label = label
        self.frequency = tone_frequency(label) if frequency is None else frequency
        self.frames = 0
        self._clock = FrameClock(AUDIO_RATE // AUDIO_FRAME_SAMPLES, AUDIO_RATE)
        t = np.arange(AUDIO_RATE) / AUDIO_RATE
        mono = (np.sin(2 * np.pi * self.frequency * t) * amplitude * 32767).astype(np.int16)
        # One second, interleaved stereo, as the packed s16 layout expects: shape (1, 2 * n).
        self._second = np.repeat(mono, 2).reshape(1, -1)

    async def recv(self) -> av.AudioFrame:
        tick = await next_tick(self, self._clock)
        start = tick.pts % AUDIO_RATE  # 48000 is a multiple of 960: a slice never wraps
        samples = self._second[:, 2 * start : 2 * (start + AUDIO_FRAME_SAMPLES)]
        self.frames += 1
        return audio_frame(samples, tick.pts)


async def next_tick(track: MediaStreamTrack, clock: FrameClock) -> Tick:
    """``clock``'s next slot, once due, for a paced ``track``: MediaStreamError when the
    track has stopped, before or while waiting (how aiortc's readers learn it ended)."""
    if track.readyState != "live":
        raise MediaStreamError
    tick = await clock.wait()
    if track.readyState != "live":
        raise MediaStreamError
    return tick


def audio_frame(samples: npt.NDArray[np.int16], pts: int) -> av.AudioFrame:
    """Interleaved s16 stereo ``samples`` (shape (1, 2 * n)) at 48 kHz as a frame at ``pts``."""
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="s16", layout="stereo")
    frame.sample_rate = AUDIO_RATE
    frame.pts = pts
    frame.time_base = AUDIO_TIME_BASE
    return frame
