"""Received frames as numpy arrays: ``Agent.video_frames`` and ``Agent.audio_frames``.

Each iterator is a frame consumer of its own, added to the agent's sinks while it runs.

- **Video, latest frame.** ``put_frame`` (on the event loop) only keeps a reference to the
  newest frame of each track in a slot; a reader that falls behind gets the newest frame
  and ``skipped`` says how many it missed, never a backlog. The numpy conversion runs on
  the reader's own one-thread pool (not the default executor that ``asyncio.to_thread``
  jobs share), with its own reformatter (a frame's built-in one is shared by every thread
  converting that frame), and only for frames a reader takes. Tracks with a new frame are
  served in the order they got it, so no track starves another.
- **Audio, continuous.** Each track's frames are resampled (``av.AudioResampler``, one per
  track, state kept) and cut into exact blocks on the event loop: measured at 27 us per
  20 ms frame (47 us on a saturated machine; ``benchmarks/frames.py``), about what a
  thread hand-off would cost. Blocks
  wait in a bounded queue of 5 s per track; a reader slower than real time loses the
  oldest ones, counted in ``dropped``.

An iterator for one peer ends when that peer leaves the room; every iterator ends when the
agent leaves (after the audio blocks already queued).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol, TypeVar, cast

import av
import numpy as np
import numpy.typing as npt
from av.audio.resampler import AudioResampler
from av.video.reformatter import VideoReformatter

from peer.events import Kind, RemoteTrack
from peer.media.tap import FrameConsumer, SizeGuard
from signaling.protocol import PeerId

log = logging.getLogger(__name__)

VIDEO_FORMATS = ("bgr24", "rgb24", "gray")
SAMPLE_RATES = (8000, 16000, 24000, 32000, 44100, 48000)
CHANNELS = (1, 2)
BLOCK_MS = (10, 20, 30, 40, 50, 60, 80, 100)
#: Audio a reader may fall behind by, per track, before the oldest blocks are dropped.
AUDIO_QUEUE_SECONDS = 5


@dataclass(frozen=True, eq=False)
class ReceivedVideo:
    """One received picture. ``array``: uint8, (H, W, 3) for bgr24/rgb24, (H, W) for gray.
    ``timestamp``: seconds on the sender's media clock since the track's first frame.
    ``skipped``: frames of this track this reader missed since its previous one.
    ``arrived``: ``time.monotonic()`` when the agent decoded it (its age is now - arrived)."""

    peer: PeerId
    track: RemoteTrack
    array: npt.NDArray[np.uint8]
    timestamp: float
    skipped: int
    arrived: float


@dataclass(frozen=True, eq=False)
class ReceivedAudio:
    """One block of ``block_ms`` of audio. ``array``: int16, (samples, channels).
    ``timestamp``: seconds since the track's first frame, never going back.
    ``dropped``: blocks of this track lost (reader too slow) since its previous one."""

    peer: PeerId
    track: RemoteTrack
    array: npt.NDArray[np.int16]
    timestamp: float
    dropped: int


class ConsumerSet(Protocol):
    """Where readers register: the agent's ``Sinks`` (consumers added and removed while
    tracks flow; a new one is told of the tracks already live)."""

    def add(self, consumer: FrameConsumer) -> None: ...

    def remove(self, consumer: FrameConsumer) -> None: ...


class _Reader(FrameConsumer):
    """What both readers share: the peer filter, the wake-up of a waiting iterator, the end."""

    kind: Kind

    def __init__(self, peer: PeerId | None) -> None:
        self.frame_kinds = frozenset({self.kind})  # the other kind is not decoded for it
        self.peer = peer
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None

    def wants(self, track: RemoteTrack) -> bool:
        return track.kind == self.kind and (self.peer is None or track.peer == self.peer)

    def close(self) -> None:
        """End iteration once what is ready has been taken."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def peer_closed(self, peer: PeerId, *, gone: bool) -> None:
        if gone and peer == self.peer:
            self.close()


@dataclass
class _Slot:
    """A track's newest frame, kept by reference until a reader takes it."""

    frame: av.VideoFrame | None = None
    arrived: float = 0.0
    count: int = 0  # frames that arrived
    taken: int = 0  # ``count`` when the reader last took one
    first_pts: int | None = None
    first_arrived: float = 0.0


def _seconds(pts: int | None, first: int | None, time_base: Fraction | None) -> float | None:
    if pts is None or first is None or time_base is None:
        return None
    return float((pts - first) * time_base)


class VideoReader(_Reader):
    """A frame consumer keeping each wanted track's newest frame (latest-frame semantics)."""

    kind = "video"

    def __init__(self, peer: PeerId | None, format: str = "bgr24") -> None:
        if format not in VIDEO_FORMATS:
            raise ValueError(f"format must be one of {', '.join(VIDEO_FORMATS)}; got {format!r}")
        super().__init__(peer)
        self.format = format
        self.skipped = 0  # frames missed, all tracks, so far
        self._slots: dict[RemoteTrack, _Slot] = {}
        self._ready: collections.OrderedDict[RemoteTrack, None] = collections.OrderedDict()
        self._sizes = SizeGuard("video_frames")

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        if self.closed or not self.wants(track) or not isinstance(frame, av.VideoFrame):
            return
        if not self._sizes.admits(track, frame.width, frame.height):
            return
        slot = self._slots.get(track)
        now = time.monotonic()
        if slot is None:
            slot = self._slots[track] = _Slot(first_pts=frame.pts, first_arrived=now)
        slot.frame, slot.arrived = frame, now
        slot.count += 1
        if track not in self._ready:
            self._ready[track] = None
        self._wake()

    def track_ended(self, track: RemoteTrack) -> None:
        self._slots.pop(track, None)
        self._ready.pop(track, None)
        self._sizes.track_ended(track)

    def take(self) -> tuple[RemoteTrack, av.VideoFrame, float, int, float] | None:
        """The ready track that waited longest: (track, frame, timestamp, skipped, arrived)."""
        while self._ready:
            track, _ = self._ready.popitem(last=False)
            slot = self._slots.get(track)
            if slot is None or slot.frame is None:
                continue
            frame, slot.frame = slot.frame, None
            skipped = slot.count - slot.taken - 1
            slot.taken = slot.count
            self.skipped += skipped
            stamp = _seconds(frame.pts, slot.first_pts, frame.time_base)
            if stamp is None:
                stamp = slot.arrived - slot.first_arrived
            return track, frame, stamp, skipped, slot.arrived
        return None

    async def frames(self, executor: ThreadPoolExecutor) -> AsyncIterator[ReceivedVideo]:
        """Yields the frames taken, converted on ``executor`` (one thread: one reformatter)."""
        reformatter = VideoReformatter()
        loop = asyncio.get_running_loop()
        while True:
            taken = self.take()
            if taken is None:
                if self.closed:
                    return
                await self._wait()
                continue
            track, frame, stamp, skipped, arrived = taken
            array = await loop.run_in_executor(executor, _to_array, reformatter, frame, self.format)
            yield ReceivedVideo(track.peer, track, array, stamp, skipped, arrived)


def _to_array(
    reformatter: VideoReformatter, frame: av.VideoFrame, format: str
) -> npt.NDArray[np.uint8]:
    """Runs in the reader's thread: one new picture in ``format``, as an array it owns."""
    converted = reformatter.reformat(frame, format=format)
    array = cast("npt.NDArray[np.uint8]", converted.to_ndarray())
    # The same frame back (already in that format) is shared with other consumers: copy it.
    return array.copy() if converted is frame else array


@dataclass
class _AudioTrack:
    """One track's resampler, the samples not yet a whole block, and its queued blocks."""

    resampler: AudioResampler
    blocks: collections.deque[tuple[float, npt.NDArray[np.int16]]]
    pending: npt.NDArray[np.int16]
    first_pts: int | None = None
    first_arrived: float = 0.0
    clock: float = 0.0  # the time of pending[0] on the track's clock
    dropped: int = 0  # blocks lost since the reader took one of this track
    started: bool = False
    ended: bool = False
    last_stamp: float = field(default=-1.0)


class AudioReader(_Reader):
    """A frame consumer resampling each wanted track into exact blocks, 5 s queued per track."""

    kind = "audio"

    def __init__(
        self,
        peer: PeerId | None,
        sample_rate: int = 16000,
        channels: int = 1,
        block_ms: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(
                f"sample_rate must be one of {', '.join(map(str, SAMPLE_RATES))}; "
                f"got {sample_rate!r}"
            )
        if channels not in CHANNELS:
            raise ValueError(f"channels must be 1 or 2; got {channels!r}")
        if block_ms not in BLOCK_MS:
            raise ValueError(
                f"block_ms must be one of {', '.join(map(str, BLOCK_MS))}; got {block_ms!r}"
            )
        super().__init__(peer)
        self.sample_rate = sample_rate
        self.channels = channels
        self.block = sample_rate * block_ms // 1000
        self.block_seconds = block_ms / 1000
        self.capacity = AUDIO_QUEUE_SECONDS * 1000 // block_ms
        self.dropped = 0  # blocks lost, all tracks, so far
        self._clock = clock
        self._tracks: dict[RemoteTrack, _AudioTrack] = {}
        self._ready: collections.OrderedDict[RemoteTrack, None] = collections.OrderedDict()

    def _resampler(self) -> AudioResampler:
        layout = "mono" if self.channels == 1 else "stereo"
        return AudioResampler(format="s16", layout=layout, rate=self.sample_rate)

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        if self.closed or not self.wants(track) or not isinstance(frame, av.AudioFrame):
            return
        state = self._tracks.get(track)
        if state is None:
            state = self._tracks[track] = _AudioTrack(
                self._resampler(),
                collections.deque(),
                np.zeros((0, self.channels), np.int16),
                first_pts=frame.pts,
                first_arrived=self._clock(),
            )
        try:
            out = state.resampler.resample(frame)
        except ValueError:  # the sender changed format or layout: start a new resampler
            state.resampler = self._resampler()
            out = state.resampler.resample(frame)
        at = _seconds(frame.pts, state.first_pts, frame.time_base)
        if at is None:
            at = self._clock() - state.first_arrived
        parts = [state.pending]
        parts.extend(
            cast("npt.NDArray[np.int16]", o.to_ndarray()).reshape(-1, self.channels) for o in out
        )
        pending = np.concatenate(parts) if len(parts) > 1 else state.pending
        # A gap in the sender's clock (lost packets, a pause) moves our clock on; never back.
        if not state.started or at - (state.clock + len(state.pending) / self.sample_rate) > (
            2 * self.block_seconds
        ):
            state.clock = max(at - len(state.pending) / self.sample_rate, state.clock)
            state.started = True
        cut = len(pending) // self.block * self.block
        for start in range(0, cut, self.block):
            stamp = max(state.clock, state.last_stamp)
            state.last_stamp = stamp
            self._queue(track, state, stamp, pending[start : start + self.block])
            state.clock += self.block_seconds
        state.pending = pending[cut:]

    def _queue(
        self, track: RemoteTrack, state: _AudioTrack, stamp: float, block: npt.NDArray[np.int16]
    ) -> None:
        if len(state.blocks) >= self.capacity:
            state.blocks.popleft()  # the oldest go first: the newest audio is kept
            state.dropped += 1
            self.dropped += 1
        state.blocks.append((stamp, np.ascontiguousarray(block)))
        if track not in self._ready:
            self._ready[track] = None
        self._wake()

    def track_ended(self, track: RemoteTrack) -> None:
        """Its queued blocks are still given; the part of a block left over is not."""
        state = self._tracks.get(track)
        if state is not None:
            state.pending = state.pending[:0]
            state.ended = True
            if not state.blocks:
                del self._tracks[track]

    def take(self) -> ReceivedAudio | None:
        """The oldest block of the track served longest ago (tracks take turns)."""
        while self._ready:
            track, _ = self._ready.popitem(last=False)
            state = self._tracks.get(track)
            if state is None or not state.blocks:
                continue
            stamp, block = state.blocks.popleft()
            dropped, state.dropped = state.dropped, 0
            if state.blocks:
                self._ready[track] = None  # to the back: the other tracks go first
            elif state.ended:
                del self._tracks[track]
            return ReceivedAudio(track.peer, track, block, stamp, dropped)
        return None

    async def frames(self) -> AsyncIterator[ReceivedAudio]:
        while True:
            block = self.take()
            if block is not None:
                yield block
            elif self.closed:
                return
            else:
                await self._wait()


Reader = TypeVar("Reader", VideoReader, AudioReader)


@contextlib.asynccontextmanager
async def _registered(
    reader: Reader, sinks: ConsumerSet, left: asyncio.Event
) -> AsyncIterator[Reader]:
    """``reader`` among the agent's consumers until the iteration ends; closed when the
    agent leaves."""
    if left.is_set():
        reader.close()
    sinks.add(reader)
    watcher = asyncio.ensure_future(left.wait())
    watcher.add_done_callback(lambda _: reader.close())
    try:
        yield reader
    finally:
        watcher.cancel()
        sinks.remove(reader)


def video_frames(
    sinks: ConsumerSet, left: asyncio.Event, peer: PeerId | None, format: str
) -> AsyncIterator[ReceivedVideo]:
    """``Agent.video_frames``: checks the arguments now, reads once iterated."""
    reader = VideoReader(peer, format)

    async def iterate() -> AsyncIterator[ReceivedVideo]:
        executor = ThreadPoolExecutor(1, thread_name_prefix="video_frames")
        try:
            async with _registered(reader, sinks, left):
                async for item in reader.frames(executor):
                    yield item
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    return iterate()


def audio_frames(
    sinks: ConsumerSet,
    left: asyncio.Event,
    peer: PeerId | None,
    sample_rate: int,
    channels: int,
    block_ms: int,
) -> AsyncIterator[ReceivedAudio]:
    """``Agent.audio_frames``: checks the arguments now, reads once iterated."""
    reader = AudioReader(peer, sample_rate, channels, block_ms)

    async def iterate() -> AsyncIterator[ReceivedAudio]:
        async with _registered(reader, sinks, left):
            async for item in reader.frames():
                yield item

    return iterate()
