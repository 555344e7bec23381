"""A flash and a beep at the same instants, and where they land in a recorded file.

The lip sync test (issue 19) and ``benchmarks/lipsync.py`` send a picture that is white for
``FLASH_FRAMES`` frames (black otherwise) and a 1 kHz beep of ``BEEP`` seconds, both every
``PERIOD`` seconds from one start (:class:`ShowClock`): the two tracks take their slots
from that one clock, so at the source flash and beep begin at the same instant. In the
file, :func:`offsets` finds the flash onsets (mean luminance jump) and beep onsets (energy)
and pairs them.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.media.synthetic import AUDIO_FRAME_SAMPLES, AUDIO_RATE, VIDEO_TIME_BASE, audio_frame

PERIOD = 2.0  # s between flashes (and beeps)
FLASH_FRAMES = 3  # white frames per flash: one lost frame still leaves the onset near
BEEP = 0.05  # s of 1 kHz per beep
TONE = 1000.0


class ShowClock:
    """The one start both tracks count their slots from (``time.monotonic()``)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    async def slot(self, index: int, rate: float) -> None:
        """Wait until slot ``index`` at ``rate`` slots per second is due."""
        delay = self.start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def current(self, rate: float) -> int:
        """The slot due now (the first a track sends: no burst to catch up)."""
        return max(0, math.ceil((time.monotonic() - self.start) * rate))


class FlashTrack(MediaStreamTrack):
    """Black yuv420p frames, white for ``FLASH_FRAMES`` frames every ``PERIOD`` s; pts from
    the shared clock's slot index, so content and timestamp agree even when late."""

    kind = "video"

    def __init__(self, clock: ShowClock, width: int = 160, height: int = 120, fps: int = 30):
        super().__init__()
        self._clock, self._fps = clock, fps
        self._next: int | None = None
        black = np.zeros((height * 3 // 2, width), np.uint8)
        black[height:] = 128
        white = black.copy()
        white[:height] = 255
        self._pictures = (black, white)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = self._clock.current(self._fps) if self._next is None else self._next
        await self._clock.slot(index, self._fps)
        late = self._clock.current(self._fps) - 1
        self._next = max(index, late) + 1  # a slot missed is skipped, never sent in a burst
        index = self._next - 1
        flash = index % round(PERIOD * self._fps) < FLASH_FRAMES
        frame = av.VideoFrame.from_ndarray(self._pictures[flash], format="yuv420p")
        frame.pts = index * 90_000 // self._fps
        frame.time_base = VIDEO_TIME_BASE
        return frame


class BeepTrack(MediaStreamTrack):
    """20 ms blocks of silence, a ``BEEP`` s 1 kHz tone from each ``PERIOD`` s mark of the
    shared clock."""

    kind = "audio"

    def __init__(self, clock: ShowClock) -> None:
        super().__init__()
        self._clock = clock
        self._next: int | None = None
        self._rate = AUDIO_RATE / AUDIO_FRAME_SAMPLES

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = self._clock.current(self._rate) if self._next is None else self._next
        await self._clock.slot(index, self._rate)
        self._next = index + 1
        first = index * AUDIO_FRAME_SAMPLES
        t = (first + np.arange(AUDIO_FRAME_SAMPLES)) / AUDIO_RATE
        beep = (t % PERIOD) < BEEP
        mono = np.where(beep, 0.5 * np.sin(2 * np.pi * TONE * t), 0.0) * 32767
        stereo = np.repeat(mono.astype(np.int16), 2).reshape(1, -1)
        return audio_frame(stereo, first)


@dataclass(frozen=True)
class Onsets:
    """Flash and beep onsets found in a file, in seconds of file time."""

    flashes: list[float]
    beeps: list[float]

    def pairs(self, within: float = PERIOD / 2) -> list[tuple[float, float]]:
        """(flash, beep - flash) for each flash with a beep less than ``within`` away; a
        flash in the file's first 0.1 s is left out (its beep may be before the file)."""
        found = []
        for flash in (f for f in self.flashes if f > 0.1):
            near = [b for b in self.beeps if abs(b - flash) < within]
            if near:
                beep = min(near, key=lambda b: abs(b - flash))
                found.append((flash, beep - flash))
        return found


def timed_pairs(path: Path) -> tuple[Onsets, list[tuple[float, float]]]:
    """The onsets in ``path`` and their pairs, the offsets printed (for a test's output)."""
    found = onsets(path)
    pairs = found.pairs()
    print(f"flashes at {[round(f, 2) for f in found.flashes]}")
    print(f"beep - flash (ms): {[round(offset * 1000, 1) for _, offset in pairs]}")
    return found, pairs


def onsets(path: Path) -> Onsets:
    """Decode ``path`` (its first video and audio streams) and find the onsets that can be
    timed: a flash whose first frame follows the previous one without a gap (or is followed
    by all its white frames without one), a beep whose audio
    follows the previous packet without a gap (a lost packet there would move the onset)."""
    flashes: list[float] = []
    starts: list[float] = []
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        frames = [
            (frame.time, float(frame.to_ndarray(format="gray").mean()) > 128)
            for frame in container.decode(video=0)
            if frame.time is not None
        ]
    for i, (t, white) in enumerate(frames):
        if not white or i == 0 or frames[i - 1][1]:
            continue
        run = 1  # white frames in a row from here: all FLASH_FRAMES there, this is the first
        while i + run < len(frames) and frames[i + run][1]:
            if frames[i + run][0] - frames[i + run - 1][0] > _FRAME_GAP:
                break
            run += 1
        if t - frames[i - 1][0] <= _FRAME_GAP or run == FLASH_FRAMES:
            flashes.append(t)
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            if frame.time is None:
                continue
            samples = frame.to_ndarray()
            mono = samples[0] if samples.ndim == 2 else samples
            if frame.format.is_packed:
                mono = mono[:: len(frame.layout.channels)]
            starts.append(frame.time)
            chunks.append(mono.astype(np.float64))
    return Onsets(flashes, _beeps(starts, chunks, AUDIO_RATE))


_FRAME_GAP = 0.05  # s between two decoded frames at most for a flash to be timed (30 fps)


def _beeps(starts: list[float], chunks: list[np.ndarray], rate: int) -> list[float]:
    """Beep onsets: the first 1 ms window loud after at least half a period of quiet, in
    audio that follows the previous chunk without a gap (after a lost packet the decoder
    fades back in: the onset would read late)."""
    beeps: list[float] = []
    quiet_since: float | None = None
    window = rate // 1000
    end = None
    for start, chunk in zip(starts, chunks, strict=True):
        contiguous = end is not None and abs(start - end) < 0.002
        end = start + len(chunk) / rate
        scale = 1.0 if np.abs(chunk).max(initial=0) > 2 else 32767.0  # float or s16
        for i in range(0, len(chunk) - window + 1, window):
            t = start + i / rate
            loud = float(np.abs(chunk[i : i + window]).max()) * scale > 3000
            if not loud:
                quiet_since = t if quiet_since is None else quiet_since
            elif quiet_since is not None:
                if t - quiet_since >= PERIOD / 2 and contiguous:
                    beeps.append(t)
                quiet_since = None
    return beeps
