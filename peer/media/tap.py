"""The single reader of a remote track: keeps aiortc's receive queue empty and fans frames out.

aiortc queues received frames without bound, so a track nobody reads grows memory
forever. A ``TrackTap`` reads continuously and hands each frame to its consumers, which
must return at once (bounded queue, keep-latest); one failing consumer is logged and
never stops the reading.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.events import FirstFrame
from peer.events import Kind as Kind  # defined once, in peer.events; re-exported
from signaling.protocol import PeerId

log = logging.getLogger(__name__)


class FrameConsumer(Protocol):
    """A sink of remote frames (the recorder, the mosaic, an application's own).

    ``put_frame`` and ``track_ended`` come from each :class:`TrackTap`. ``expect`` and
    ``peer_closed`` come from the agent, once per connection, so a sink can prepare for a
    peer's tracks and let go of what it holds for it; they have no-op defaults here, which a
    sink gets by subclassing this class. A consumer that only has the first two (duck-typed,
    written before them) keeps working: :class:`Sinks` calls the others only where present.
    """

    def put_frame(self, peer: PeerId, kind: Kind, frame: av.AudioFrame | av.VideoFrame) -> None:
        """Called on the event loop for every frame; must never block (bounded queue, drop/skip)."""

    def track_ended(self, peer: PeerId, kind: Kind) -> None:
        """No more frames of ``kind`` will come from ``peer`` through this tap."""

    def expect(self, peer: PeerId, kinds: set[Kind]) -> None:
        """A connection to ``peer`` was negotiated: these are the kinds it will send."""
        return None

    async def peer_closed(self, peer: PeerId, *, gone: bool) -> None:
        """The connection to ``peer`` closed (its tracks ended first): finish what belongs to
        that connection. ``gone``: the peer is forgotten too (it left the room, or we did),
        not about to be connected again, so drop what is kept across its connections. Also
        called (``gone``) for a peer that leaves while no connection to it is open."""
        return None


class Sinks:
    """The agent's frame consumers, as one: the taps' list, and the lifecycle calls made
    once per connection, each sink's failure logged and never stopping the others."""

    def __init__(self, consumers: Sequence[FrameConsumer]) -> None:
        self.consumers = list(consumers)

    def expect(self, peer: PeerId, kinds: set[Kind]) -> None:
        for consumer in self.consumers:
            expect = getattr(consumer, "expect", None)
            if expect is not None:
                try:
                    expect(peer, kinds)
                except Exception:
                    log.exception("%s failed on expecting %s", type(consumer).__name__, peer)

    async def peer_closed(self, peer: PeerId, *, gone: bool) -> None:
        for consumer in self.consumers:
            closed = getattr(consumer, "peer_closed", None)
            if closed is not None:
                try:
                    await closed(peer, gone=gone)
                except Exception:  # the rest of the closing must happen all the same
                    log.exception("%s failed on closing %s", type(consumer).__name__, peer)


class FirstFrames(FrameConsumer):
    """The agent's own sink: reports the first frame of each remote track, once (until it
    ends), as :class:`peer.events.FirstFrame`, timed from ``since()`` (when the agent joined)."""

    def __init__(self, emit: Callable[[FirstFrame], None], since: Callable[[], float]) -> None:
        self._emit = emit
        self._since = since
        self._seen: set[tuple[PeerId, Kind]] = set()

    def put_frame(self, peer: PeerId, kind: Kind, frame: av.AudioFrame | av.VideoFrame) -> None:
        if (peer, kind) not in self._seen:
            self._seen.add((peer, kind))
            self._emit(FirstFrame(peer, kind, time.monotonic() - self._since()))

    def track_ended(self, peer: PeerId, kind: Kind) -> None:
        self._seen.discard((peer, kind))


#: The largest decoded picture the recorder and the mosaic take, in pixels (3840x2160): a
#: remote peer picks the size it sends, and each bigger picture held costs them tens of MB.
MAX_FRAME_PIXELS = 3840 * 2160


class SizeGuard:
    """Refuses video frames over ``max_pixels`` for one consumer (``owner``, as logged):
    one warning per track (until ``track_ended``), not per frame; ``refused`` counts them."""

    def __init__(self, owner: str, max_pixels: int = MAX_FRAME_PIXELS) -> None:
        self.owner = owner
        self.max_pixels = max_pixels
        self.refused = 0
        self._warned: set[PeerId] = set()

    def admits(self, peer: PeerId, width: int, height: int) -> bool:
        if width * height <= self.max_pixels:
            return True
        self.refused += 1
        if peer not in self._warned:
            self._warned.add(peer)
            log.warning(
                "%s: leaving out %dx%d video from %s: over %d pixels",
                self.owner,
                width,
                height,
                peer,
                self.max_pixels,
            )
        return False

    def track_ended(self, peer: PeerId) -> None:
        self._warned.discard(peer)


class FpsMeter:
    """Frames per second over a sliding window; reads 0 once frames stopped for a window."""

    def __init__(self, window: float = 2.0, *, max_events: int = 1024) -> None:
        self.window = window
        self._times: collections.deque[float] = collections.deque(maxlen=max_events)

    def tick(self, now: float) -> None:
        self._times.append(now)

    def rate(self, now: float) -> float:
        cutoff = now - self.window
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


class TrackTap:
    """Reads one remote track of one peer until it ends or ``stop()`` is awaited."""

    def __init__(
        self,
        peer: PeerId,
        track: MediaStreamTrack,
        consumers: Sequence[FrameConsumer] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if track.kind not in ("audio", "video"):
            raise ValueError(f"cannot tap a track of kind {track.kind!r}")
        self.peer = peer
        self.track = track
        self.kind: Kind = "audio" if track.kind == "audio" else "video"
        self.frames = 0
        self.first_frame_at: float | None = None
        self._consumers = list(consumers)
        self._clock = clock
        self._meter = FpsMeter()
        self._task: asyncio.Task[None] | None = None
        self._ended = False
        self._failures = 0

    @property
    def fps(self) -> float:
        return self._meter.rate(self._clock())

    @property
    def ended(self) -> bool:
        return self._ended

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._read(), name=f"tap {self.peer} {self.kind}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._end()

    async def wait_ended(self) -> None:
        """Returns when the track has ended (or the tap was stopped)."""
        if self._task is not None:
            await asyncio.wait({self._task})

    async def _read(self) -> None:
        log.debug("tap %s %s started", self.peer, self.kind)
        try:
            while True:
                frame = await self.track.recv()
                self._on_frame(frame)
        except MediaStreamError:
            log.info("%s track of %s ended after %d frames", self.kind, self.peer, self.frames)
        finally:
            self._end()

    def _on_frame(self, frame: object) -> None:
        now = self._clock()
        self.frames += 1
        if self.first_frame_at is None:
            self.first_frame_at = now
        self._meter.tick(now)
        if not isinstance(frame, av.AudioFrame | av.VideoFrame):
            return  # an encoded packet (passthrough): nothing for frame consumers
        for consumer in self._consumers:
            try:
                consumer.put_frame(self.peer, self.kind, frame)
            except Exception:
                self._failures += 1
                if self._failures == 1 or self._failures % 100 == 0:
                    log.exception(
                        "%s consumer failed on a %s frame of %s (%d failures)",
                        type(consumer).__name__,
                        self.kind,
                        self.peer,
                        self._failures,
                    )

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        for consumer in self._consumers:
            try:
                consumer.track_ended(self.peer, self.kind)
            except Exception:
                log.exception("%s failed on the end of a track", type(consumer).__name__)
