"""Sending from numpy: ``VideoSource`` and ``AudioSource``, tracks fed by ``capture()``.

``capture`` is called from the user's thread (any thread, several at once) and does the
conversion there: video is scaled and turned into yuv420p, audio resampled to the agent's
48 kHz s16 stereo, so the event loop only copies a finished picture or 20 ms of samples
into a frame. The caller never waits for the loop: video keeps the newest picture in one
lock-protected slot (a picture not yet sent is replaced), audio goes into a bounded ring
(a full ring drops its oldest samples). The tracks are paced by ``FrameClock`` like the
synthetic ones, and leave in the same formats (PITFALLS.md: frames in other formats shared
by encoder threads crashed the process).
"""

from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction

import av
import cv2
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamTrack

from peer.media.errors import MediaSourceError
from peer.media.pacing import FrameClock
from peer.media.synthetic import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_RATE,
    VIDEO_CLOCK_RATE,
    VIDEO_TIME_BASE,
    audio_frame,
    next_tick,
)

__all__ = ["AudioSource", "SourceStopped", "VideoSource"]

log = logging.getLogger(__name__)

_CONVERSIONS = {"bgr24": cv2.COLOR_BGR2YUV_I420, "rgb24": cv2.COLOR_RGB2YUV_I420}


class SourceStopped(MediaSourceError):
    """``capture`` on a source whose track has stopped (``stop()``, ``LocalMedia.stop()``):
    raised so that a feeding thread learns it can end."""


class VideoSource(MediaStreamTrack):
    """A video track showing the newest picture given to ``capture``, paced at ``fps``.

    Until the first picture it sends black; when no new picture came for a slot, it sends
    the last one again. Counters: ``captured`` (pictures taken by ``capture``), ``sent``
    (captured pictures that went out), ``replaced`` (captured pictures overwritten by a
    newer one before they went out), ``repeated`` (slots that sent the previous picture
    again), ``age`` (seconds from ``timestamp`` to sending, for the last picture sent).
    """

    kind = "video"

    def __init__(self, *, width: int, height: int, fps: float = 30, format: str = "bgr24") -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"width and height must be positive and even, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if format not in _CONVERSIONS:
            raise ValueError(f"format must be one of {sorted(_CONVERSIONS)}, got {format!r}")
        super().__init__()
        self.width = width
        self.height = height
        self.fps = fps
        self.format = format
        self.captured = 0
        self.sent = 0
        self.replaced = 0
        self.repeated = 0
        self.age = 0.0
        self._clock = FrameClock(Fraction(fps).limit_denominator(1001), VIDEO_CLOCK_RATE)
        self._lock = threading.Lock()
        self._pending: tuple[npt.NDArray[np.uint8], float] | None = None
        black = np.zeros((height, width, 3), dtype=np.uint8)
        self._current = _i420(black, cv2.COLOR_BGR2YUV_I420)

    def capture(self, array: npt.NDArray[np.uint8], timestamp: float | None = None) -> None:
        """Hand over one ``uint8`` ``(H, W, 3)`` picture (BGR, or RGB with ``format="rgb24"``).

        Any thread; it never waits for the event loop. The scaling (to ``width`` x
        ``height``) and the conversion to yuv420p run here, in the caller's thread (~0.25 ms
        for 640x480 as it is, ~3.5 ms for 1280x720 scaled to it). ``timestamp`` is when the
        picture was taken, in ``time.monotonic()`` seconds (default: now); it only feeds
        ``age``. Raises ``ValueError`` for a wrong array and ``SourceStopped`` once the track
        has stopped.
        """
        if self.readyState != "live":
            raise SourceStopped("capture on a VideoSource that has stopped")
        if not isinstance(array, np.ndarray):
            raise ValueError(f"expected a numpy array, got {type(array).__name__}")
        if array.dtype != np.uint8:
            raise ValueError(f"expected a uint8 array (H, W, 3), got dtype {array.dtype}")
        if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(
                f"expected a uint8 array (H, W, 3) in {self.format}, got {array.shape}"
            )
        if array.shape[:2] != (self.height, self.width):
            size = (self.width, self.height)
            array = np.asarray(cv2.resize(array, size, interpolation=cv2.INTER_AREA), np.uint8)
        yuv = _i420(np.ascontiguousarray(array), _CONVERSIONS[self.format])
        taken = time.monotonic() if timestamp is None else timestamp
        with self._lock:
            if self._pending is not None:
                self.replaced += 1
            self._pending = (yuv, taken)
            self.captured += 1

    async def recv(self) -> av.VideoFrame:
        """The picture for the next slot of the clock (aiortc calls it; the newest captured)."""
        tick = await next_tick(self, self._clock)
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            self.repeated += 1
        else:
            self._current, taken = pending
            self.sent += 1
            self.age = time.monotonic() - taken
        frame = av.VideoFrame.from_ndarray(self._current, format="yuv420p")
        frame.pts = tick.pts
        frame.time_base = VIDEO_TIME_BASE
        return frame


def _i420(array: npt.NDArray[np.uint8], conversion: int) -> npt.NDArray[np.uint8]:
    return np.asarray(cv2.cvtColor(array, conversion), dtype=np.uint8)


class _SampleRing:
    """A fixed-size FIFO of interleaved s16 stereo samples; a write that does not fit drops
    the oldest. Not thread-safe: ``AudioSource`` holds its lock around every call."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data = np.zeros((capacity, 2), dtype=np.int16)
        self._start = 0
        self.size = 0

    def write(self, samples: npt.NDArray[np.int16]) -> int:
        """Append ``samples`` (n, 2); returns how many old samples were dropped for them."""
        if len(samples) >= self.capacity:
            dropped = self.size + len(samples) - self.capacity
            self._data[:] = samples[-self.capacity :]
            self._start, self.size = 0, self.capacity
            return dropped
        dropped = max(0, self.size + len(samples) - self.capacity)
        self._start = (self._start + dropped) % self.capacity
        self.size -= dropped
        end = (self._start + self.size) % self.capacity
        first = min(len(samples), self.capacity - end)
        self._data[end : end + first] = samples[:first]
        self._data[: len(samples) - first] = samples[first:]
        self.size += len(samples)
        return dropped

    def read(self, count: int) -> npt.NDArray[np.int16]:
        """Take up to ``count`` samples (fewer when fewer are held)."""
        count = min(count, self.size)
        index = (self._start + np.arange(count)) % self.capacity
        out = self._data[index]
        self._start = (self._start + count) % self.capacity
        self.size -= count
        return out


class AudioSource(MediaStreamTrack):
    """An audio track playing what ``capture`` is given, in 20 ms blocks, silence when empty.

    ``buffer`` seconds are kept at most: a ``capture`` that does not fit drops the oldest
    samples, counted in ``overflow`` (samples at 48 kHz, per channel). Sound starts, and
    starts again after running dry, once ``prebuffer`` seconds are held: a cushion against
    the feeding thread's jitter, paid once in latency. ``underruns`` counts the times it ran
    dry while playing, ``silent`` the 20 ms blocks sent as silence.
    """

    kind = "audio"

    def __init__(
        self,
        *,
        sample_rate: int = AUDIO_RATE,
        channels: int = 1,
        buffer: float = 2.0,
        prebuffer: float = 0.04,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        if buffer <= 0 or not 0 <= prebuffer < buffer:
            raise ValueError(f"need 0 <= prebuffer < buffer, got {prebuffer} and {buffer}")
        super().__init__()
        self.sample_rate = sample_rate
        self.channels = channels
        self.captured = 0  # samples taken by capture, per channel, at sample_rate
        self.overflow = 0
        self.underruns = 0
        self.silent = 0
        self._resampler = (
            None
            if sample_rate == AUDIO_RATE
            else av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE)
        )
        self._convert = threading.Lock()  # the resampler is stateful: one capture at a time
        self._lock = threading.Lock()  # the ring, shared with recv
        self._ring = _SampleRing(round(buffer * AUDIO_RATE))
        self._prebuffer = round(prebuffer * AUDIO_RATE)
        self._playing = False
        self._clock = FrameClock(AUDIO_RATE // AUDIO_FRAME_SAMPLES, AUDIO_RATE)

    @property
    def buffered(self) -> int:
        """Samples (48 kHz, per channel) captured and not sent yet."""
        with self._lock:
            return self._ring.size

    def capture(self, pcm: npt.NDArray[np.int16] | npt.NDArray[np.float32]) -> None:
        """Hand over ``(n, channels)`` samples, ``int16`` or ``float32`` in [-1, 1] (clipped);
        a 1-D array is taken as mono.

        Any thread; it never waits for the event loop. Resampling to 48 kHz runs here, in
        the caller's thread (tens of microseconds per 20 ms). Raises ``ValueError`` for a
        wrong array and ``SourceStopped`` once the track has stopped.
        """
        if self.readyState != "live":
            raise SourceStopped("capture on an AudioSource that has stopped")
        samples = self._checked(pcm)
        with self._convert:
            stereo = self._to_output(samples)
            with self._lock:
                self.overflow += self._ring.write(stereo)
                self.captured += len(samples)

    def _checked(self, pcm: object) -> npt.NDArray[np.int16]:
        expected = f"int16 or float32 (n, {self.channels})"
        if not isinstance(pcm, np.ndarray):
            raise ValueError(f"expected a numpy array {expected}, got {type(pcm).__name__}")
        if pcm.dtype not in (np.int16, np.float32):
            raise ValueError(f"expected {expected}, got dtype {pcm.dtype}")
        if pcm.ndim == 1 and self.channels == 1:
            pcm = pcm[:, np.newaxis]
        if pcm.ndim != 2 or pcm.shape[1] != self.channels:
            raise ValueError(f"expected {expected}, got shape {pcm.shape}")
        if pcm.dtype == np.float32:
            return (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16)
        return np.asarray(pcm, dtype=np.int16)

    def _to_output(self, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """``samples`` as 48 kHz stereo, shape (n, 2)."""
        # Mono is doubled here: the resampler's upmix would lower it by 3 dB.
        stereo = np.repeat(samples, 2, axis=1) if self.channels == 1 else samples
        if self._resampler is None:
            return stereo
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(stereo).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = self.sample_rate
        chunks = [out.to_ndarray().reshape(-1, 2) for out in self._resampler.resample(frame)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 2), dtype=np.int16)

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms block (aiortc calls it): buffered samples, silence when there are none."""
        tick = await next_tick(self, self._clock)
        block = np.zeros((AUDIO_FRAME_SAMPLES, 2), dtype=np.int16)
        with self._lock:
            held = self._ring.size
            if not self._playing and held >= max(self._prebuffer, 1):
                self._playing = True
            if self._playing:
                taken = self._ring.read(AUDIO_FRAME_SAMPLES)
                block[: len(taken)] = taken
                if len(taken) < AUDIO_FRAME_SAMPLES:
                    self._playing = False
                    self.underruns += 1
            else:
                self.silent += 1
        return audio_frame(block.reshape(1, -1), tick.pts)
