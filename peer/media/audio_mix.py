"""Every remote audio track mixed into 20 ms blocks: the room recorder's audio
(:mod:`peer.media.room_recorder`) and the speaker's (:mod:`peer.media.speaker`).

Each track has its own jitter buffer of 20 ms blocks at 48 kHz; a block is taken from each
track that has one, summed and clipped. A track that is late or silent adds nothing (the mix
never waits for it), and one that sends more than its buffer holds loses its oldest blocks
(counted as late).

Clocks: whoever calls :meth:`AudioMix.mix` sets the pace (the recorder's timer, the sound
card), and each sender sends at its own sound card's pace. Two clocks a few parts per
million apart move a buffer by tens of milliseconds an hour. With ``follow`` the mix holds
each track's buffer at its prebuffer: it watches the buffer's level (smoothed over about a
second) and takes a few samples more or fewer than a block when it drifts, stretched to the
block (at most 0.5%: a pitch change nobody hears), instead of letting the delay grow until
a block is dropped or running dry and clicking. Time gained at once (a burst after the
machine starved this process or the sender's) would take that pace seconds to play away,
all of it heard later: what a buffer held above its prebuffer all through the last half
second (``_SKIP_WINDOW``), when that is a block or more, is skipped at the next quiet
moment instead (a pause in speech, which nobody hears shortened).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from peer.events import RemoteTrack
from peer.media.errors import MediaError
from signaling.protocol import PeerId

__all__ = ["AUDIO_RATE", "BLOCK_SAMPLES", "AudioMix", "is_native", "is_quiet", "to_samples"]

AUDIO_RATE = 48_000
BLOCK_SAMPLES = 960  # 20 ms at 48 kHz

Block = npt.NDArray[np.int16]  # (BLOCK_SAMPLES, 2): s16 stereo
Samples = npt.NDArray[np.int16]  # (n, 2)

#: ``follow``: the level's smoothing per block (a time constant of about 1 s), the error
#: left alone (5 ms), samples taken more or less per block for each sample of error
#: (20 ms off: 4 samples a block, back in about 5 s), and the most (5 a block, 0.5%). A
#: sender 100 ppm off (a common crystal) is followed a few milliseconds from the target.
_SMOOTHING = 0.02
_DEAD_ZONE = 240
_GAIN = 1 / 240
_MAX_STEP = 5
#: ``follow``: what a buffer held above its prebuffer all through a window of this many
#: blocks (0.5 s), when it is at least ``_SKIP_AT`` samples (20 ms), is skipped in one go
#: where the samples skipped are quiet (:func:`is_quiet`).
_SKIP_WINDOW = 25
_SKIP_AT = 960
#: Quiet: every sample under 1% of full scale (-40 dBFS), a pause in speech.
_QUIET = 328


def is_quiet(samples: npt.NDArray[np.int16]) -> bool:
    """Whether leaving ``samples`` out is inaudible: no sample reaches ``_QUIET``."""
    return not samples.size or int(np.abs(samples.astype(np.int32)).max()) < _QUIET


@dataclass
class _Voice:
    """One audio track's jitter buffer: whole blocks and the rest of a cut frame (with
    ``follow``: the frames as they came, the first one cut short by the last take), its
    state."""

    blocks: collections.deque[Samples]
    partial: Samples = field(default_factory=lambda: np.zeros((0, 2), np.int16))
    playing: bool = False
    ended: bool = False
    level: float | None = None  # ``follow``: the smoothed samples held before a mix
    lowest: int | None = None  # ``follow``: the fewest held before a mix in this window
    mixes: int = 0  # ``follow``: mixes in this window
    excess: int = 0  # ``follow``: samples to skip at the next quiet moment

    def held(self) -> int:
        return sum(len(block) for block in self.blocks)

    def peek(self, count: int) -> Samples:
        """Up to ``count`` samples from the front, left there."""
        parts: list[Samples] = []
        for block in self.blocks:
            if count <= 0:
                break
            parts.append(block[:count])
            count -= len(block)
        return np.concatenate(parts) if parts else np.zeros((0, 2), np.int16)

    def take(self, count: int) -> Samples:
        """Up to ``count`` samples from the front."""
        parts: list[Samples] = []
        while count and self.blocks:
            head = self.blocks[0]
            if len(head) <= count:
                parts.append(self.blocks.popleft())
                count -= len(head)
            else:
                parts.append(head[:count])
                self.blocks[0] = head[count:]
                count = 0
        return np.concatenate(parts) if parts else np.zeros((0, 2), np.int16)


class AudioMix:
    """Mixes the audio of every track into 20 ms blocks of s16 stereo at 48 kHz. Pure.

    Each track buffers up to ``capacity`` blocks and starts playing once it holds
    ``prebuffer`` of them (room for network jitter). ``mix`` takes one block from each
    playing track: a track with nothing buffered contributes silence and buffers again
    (``underruns``); a block that does not fit replaces the oldest (``late``). ``follow``:
    hold each buffer at ``prebuffer`` against clock drift (the module's docstring);
    ``stretched`` counts the blocks made from more or fewer samples, ``skipped`` the quiet
    stretches left out to bring a buffer back down.
    """

    def __init__(self, *, capacity: int = 10, prebuffer: int = 3, follow: bool = False) -> None:
        if not 0 < prebuffer <= capacity:
            raise ValueError(f"need 0 < prebuffer <= capacity, got {prebuffer} and {capacity}")
        self.capacity = capacity
        self.prebuffer = prebuffer
        self.follow = follow
        self.late = 0
        self.underruns = 0
        self.clipped = 0
        self.stretched = 0
        self.skipped = 0
        self._voices: dict[RemoteTrack, _Voice] = {}

    def push(self, track: RemoteTrack, samples: Samples) -> None:
        """``samples`` (n, 2) s16 of ``track``, in arrival order."""
        voice = self._voices.get(track)
        if voice is None:
            voice = self._voices[track] = _Voice(collections.deque())
        voice.ended = False
        if self.follow:  # kept as they come: the level is measured to the sample
            voice.blocks.append(samples)
            while voice.held() > self.capacity * BLOCK_SAMPLES:
                voice.take(BLOCK_SAMPLES)
                self.late += 1
            return
        pending = np.concatenate([voice.partial, samples]) if voice.partial.size else samples
        whole = len(pending) // BLOCK_SAMPLES * BLOCK_SAMPLES
        for start in range(0, whole, BLOCK_SAMPLES):
            if len(voice.blocks) >= self.capacity:
                voice.blocks.popleft()
                self.late += 1
            voice.blocks.append(pending[start : start + BLOCK_SAMPLES])
        voice.partial = pending[whole:].copy()

    def end(self, track: RemoteTrack) -> None:
        """No more samples of ``track``: what it buffered still plays, then it goes."""
        voice = self._voices.get(track)
        if voice is not None:
            voice.ended = True
            voice.playing = True  # play out even a buffer shorter than the prebuffer

    def forget(self, peer: PeerId) -> None:
        """Drops every track of ``peer`` at once (it left the room)."""
        self._voices = {t: v for t, v in self._voices.items() if t.peer != peer}

    def tracks(self) -> list[RemoteTrack]:
        return list(self._voices)

    def buffered(self, track: RemoteTrack) -> int:
        """Samples ``track`` holds now (0 for a track the mix does not have)."""
        voice = self._voices.get(track)
        return 0 if voice is None else voice.held()

    def mix(self) -> Block:
        """The next 20 ms of the room: silence when nobody has anything to play."""
        total = np.zeros((BLOCK_SAMPLES, 2), np.int32)
        for track, voice in list(self._voices.items()):
            if not voice.playing and voice.held() >= self.prebuffer * BLOCK_SAMPLES:
                voice.playing = True
                voice.level = None
                if self.follow:  # start at the target: a backlog would take the follower
                    voice.take(voice.held() - self.prebuffer * BLOCK_SAMPLES)  # (0.5%) minutes
            if not voice.playing:
                continue
            if not voice.blocks:
                if voice.ended:
                    del self._voices[track]
                else:
                    self.underruns += 1
                    voice.playing = False
                continue
            total += self._next_block(voice)
        peak = int(np.abs(total).max())
        if peak > 32767:
            self.clipped += 1
        return np.clip(total, -32768, 32767).astype(np.int16)

    def _next_block(self, voice: _Voice) -> Samples:
        if not self.follow:
            return voice.take(BLOCK_SAMPLES)
        target = self.prebuffer * BLOCK_SAMPLES
        held = self._skip_standing(voice, target)
        voice.level = (
            held if voice.level is None else voice.level + _SMOOTHING * (held - voice.level)
        )
        error = voice.level - target
        step = 0 if abs(error) <= _DEAD_ZONE else round(error * _GAIN)
        step = max(-_MAX_STEP, min(_MAX_STEP, step))
        taken = voice.take(BLOCK_SAMPLES + step)
        if len(taken) == BLOCK_SAMPLES:
            return taken
        if len(taken) < BLOCK_SAMPLES - _MAX_STEP:  # ran dry within the block
            self.underruns += 1
            voice.playing = False
            block = np.zeros((BLOCK_SAMPLES, 2), np.int16)
            block[: len(taken)] = taken
            return block
        self.stretched += 1
        return _stretch(taken, BLOCK_SAMPLES)

    def _skip_standing(self, voice: _Voice, target: int) -> int:
        """Skips what ``voice`` held above ``target`` all through the last window, once
        it is quiet; returns the samples held now."""
        held = voice.held()
        voice.lowest = held if voice.lowest is None else min(voice.lowest, held)
        voice.mixes += 1
        if voice.mixes >= _SKIP_WINDOW:
            standing = voice.lowest - target
            voice.excess = standing if standing >= _SKIP_AT else 0
            voice.lowest, voice.mixes = None, 0
        excess = min(voice.excess, held - BLOCK_SAMPLES)  # a block is left to play
        if excess > 0 and is_quiet(voice.peek(excess)):
            voice.take(excess)
            voice.level = None  # smoothed from what is held now
            voice.excess = 0
            self.skipped += 1
            return held - excess
        return held


def _stretch(samples: Samples, count: int) -> Samples:
    """``samples`` resampled to ``count`` samples (linear: the change is under 1%)."""
    positions = np.linspace(0, len(samples) - 1, count)
    source = np.arange(len(samples))
    out = np.empty((count, 2), np.int16)
    for channel in range(2):
        out[:, channel] = np.round(np.interp(positions, source, samples[:, channel]))
    return out


def is_native(frame: av.AudioFrame) -> bool:
    """Already the mix's format: s16 stereo at 48 kHz (what aiortc's Opus decoder gives)."""
    shape = (frame.format.name, frame.layout.name, frame.sample_rate)
    return shape == ("s16", "stereo", AUDIO_RATE)


def to_samples(frame: av.AudioFrame, resampler: av.AudioResampler | None) -> Samples:
    """``frame`` as (n, 2) s16 samples at 48 kHz, read without changing the (shared) frame.

    aiortc's Opus decoder gives s16 stereo at 48 kHz, which is only copied; anything else
    goes through ``resampler`` (s16, stereo, 48 kHz; the caller's own, one per track).
    """
    if is_native(frame):
        return np.array(frame.to_ndarray(), np.int16).reshape(-1, 2)
    if resampler is None:
        raise MediaError(f"{frame.format.name} {frame.layout.name} audio needs a resampler")
    samples: Any = np.ascontiguousarray(frame.to_ndarray())  # the frame's own sample type
    copy = av.AudioFrame.from_ndarray(samples, format=frame.format.name, layout=frame.layout.name)
    copy.sample_rate = frame.sample_rate
    chunks = [c.to_ndarray().reshape(-1, 2) for c in resampler.resample(copy)]
    return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros((0, 2), np.int16)
