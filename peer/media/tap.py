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
from typing import Protocol, cast

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.events import FirstFrame, RemoteTrack
from peer.events import Kind as Kind  # defined once, in peer.events; re-exported
from peer.media.packets import (
    EncodedFrame,
    PacketConsumer,
    TrackHooks,
    Want,
    frame_kinds_of,
    wants_of,
)
from signaling.protocol import PeerId

log = logging.getLogger(__name__)


class FrameConsumer(TrackHooks, Protocol):
    """A sink of remote frames (the recorder, the mosaic, an application's own).

    Every call names the :class:`RemoteTrack` (its peer, kind and ``index``; the same object
    as in :class:`peer.events.TrackReceived`), so a consumer tells a peer's camera from its
    screen share by keying on it. ``put_frame`` and ``track_ended`` come from each
    :class:`TrackTap`; ``track_started`` when a track arrives, or when the consumer is added
    to :class:`Sinks` while the track is live. ``expect`` and ``peer_closed`` come from the
    agent, once per connection, so a sink can prepare for a peer's tracks and let go of what
    it holds for it. All but the first two have no-op defaults
    (:class:`peer.media.packets.TrackHooks`), which a sink gets by subclassing this class;
    a duck-typed consumer with only the first two keeps working: :class:`Sinks` calls the
    others only where present.
    """

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        """Called on the event loop for every frame; must never block (bounded queue, drop/skip)."""


#: Anything the agent's :class:`Sinks` take: decoded frames, encoded ones, or both
#: (:func:`peer.media.packets.wants_of`).
Consumer = FrameConsumer | PacketConsumer


class Sinks:
    """The agent's frame and packet consumers, as one consumer: the taps hand it every
    frame (decoded: :meth:`put_frame`; encoded: :meth:`put_packet`), and it keeps which
    tracks are live, so a consumer added at run time (:meth:`add`) is told of them and gets
    their next frames; a removed one gets nothing more, even when it is removed while a
    frame is being handed out. Each consumer's failure is logged and never stops the others.

    :meth:`wants_frames_of` is what decides whether remote tracks of a kind are decoded at
    all: true while some consumer wants decoded frames (:class:`peer.media.packets.Want`)
    of that kind (:func:`peer.media.packets.frame_kinds_of`).
    """

    def __init__(self, consumers: Sequence[Consumer] = ()) -> None:
        #: Replaced, never changed in place: a dispatch in progress keeps its own copy.
        self.consumers: tuple[Consumer, ...] = ()
        self._frames: tuple[FrameConsumer, ...] = ()
        self._packets: tuple[PacketConsumer, ...] = ()
        self._frame_kinds: frozenset[Kind] = frozenset()
        self._live: dict[RemoteTrack, None] = {}  # insertion order: arrival
        #: Per video track, the packet consumers (by id) that get nothing before a keyframe.
        self._waiting: dict[RemoteTrack, set[int]] = {}
        self._failures = 0
        for consumer in consumers:
            self.add(consumer)

    @property
    def wants_frames(self) -> bool:
        """Some consumer wants decoded frames."""
        return bool(self._frames)

    def wants_frames_of(self, kind: Kind) -> bool:
        """Some consumer wants decoded frames of ``kind``."""
        return kind in self._frame_kinds

    def add(self, consumer: Consumer) -> None:
        """From now on ``consumer`` gets every frame, starting with the live tracks'
        (a packet consumer's first video packet of each is a keyframe)."""
        if consumer in self.consumers:
            return
        self.consumers = (*self.consumers, consumer)
        self._sort()
        for track in list(self._live):
            self._wait_for_keyframe(track, (consumer,))
            self._call(consumer, "track_started", track)

    def remove(self, consumer: Consumer) -> None:
        """``consumer`` gets no further call (``track_ended`` included)."""
        self.consumers = tuple(c for c in self.consumers if c is not consumer)
        self._sort()
        for waiting in self._waiting.values():
            waiting.discard(id(consumer))

    def _sort(self) -> None:
        # What a consumer wants is read here, once: its methods are what Want promises.
        wants = [(c, wants_of(c)) for c in self.consumers]
        self._frames = tuple(cast(FrameConsumer, c) for c, w in wants if Want.FRAMES in w)
        self._packets = tuple(cast(PacketConsumer, c) for c, w in wants if Want.PACKETS in w)
        self._frame_kinds = frozenset().union(*(frame_kinds_of(c) for c in self._frames))

    def live_tracks(self) -> tuple[RemoteTrack, ...]:
        """The tracks being read now, in the order they arrived."""
        return tuple(self._live)

    def track_started(self, track: RemoteTrack) -> None:
        self._live[track] = None
        self._wait_for_keyframe(track, self._packets)
        self._each("track_started", track)

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        consumers = self._frames
        for consumer in consumers:
            if self._frames is not consumers and consumer not in self._frames:
                continue  # removed by an earlier consumer of this same frame
            try:
                consumer.put_frame(track, frame)
            except Exception:
                self._failed(consumer, track)

    def put_packet(self, track: RemoteTrack, packet: EncodedFrame) -> bool:
        """Hand ``packet`` to the packet consumers; True when one of them is waiting for a
        keyframe of ``track`` and ``packet`` is none (the tap asks the sender for one)."""
        waiting = self._waiting.get(track)
        skipped = False
        consumers = self._packets
        for consumer in consumers:
            if self._packets is not consumers and consumer not in self._packets:
                continue
            if waiting and id(consumer) in waiting:
                if not packet.keyframe:
                    skipped = True
                    continue
                waiting.discard(id(consumer))
            try:
                consumer.put_packet(track, packet)
            except Exception:
                self._failed(consumer, track)
        return skipped

    def resync(self, track: RemoteTrack) -> None:
        """Frames of ``track`` were lost for good: its packet consumers get nothing more of
        it until its next keyframe."""
        if track in self._live:
            self._wait_for_keyframe(track, self._packets)

    def _wait_for_keyframe(self, track: RemoteTrack, consumers: Sequence[Consumer]) -> None:
        if track.kind == "video":
            waiting = self._waiting.setdefault(track, set())
            waiting.update(id(c) for c in consumers if Want.PACKETS in wants_of(c))

    def _failed(self, consumer: Consumer, track: RemoteTrack) -> None:
        self._failures += 1
        if self._failures == 1 or self._failures % 100 == 0:
            log.exception(
                "%s failed on a frame of %r (%d failures)",
                type(consumer).__name__,
                track,
                self._failures,
            )

    def track_ended(self, track: RemoteTrack) -> None:
        self._live.pop(track, None)
        self._waiting.pop(track, None)
        self._each("track_ended", track)

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

    def _each(self, hook: str, track: RemoteTrack) -> None:
        consumers = self.consumers
        for consumer in consumers:
            if self.consumers is consumers or consumer in self.consumers:
                self._call(consumer, hook, track)

    @staticmethod
    def _call(consumer: Consumer, hook: str, track: RemoteTrack) -> None:
        method = getattr(consumer, hook, None)
        if method is not None:
            try:
                method(track)
            except Exception:
                log.exception("%s failed on %s %r", type(consumer).__name__, hook, track)


class FirstFrames(PacketConsumer):
    """The agent's own sink: reports the first frame of each remote track, once (until it
    ends), as :class:`peer.events.FirstFrame`, timed from ``since()`` (when the agent joined).

    It takes encoded frames (the first one of a video track is a keyframe), so reporting
    first frames never makes the agent decode a track.
    """

    wants = Want.PACKETS

    def __init__(self, emit: Callable[[FirstFrame], None], since: Callable[[], float]) -> None:
        self._emit = emit
        self._since = since
        self._seen: set[RemoteTrack] = set()

    def put_packet(self, track: RemoteTrack, packet: EncodedFrame) -> None:
        if track not in self._seen:
            self._seen.add(track)
            seconds = time.monotonic() - self._since()
            self._emit(FirstFrame(track.peer, track.kind, seconds, track))

    def track_ended(self, track: RemoteTrack) -> None:
        self._seen.discard(track)


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
        self._warned: set[RemoteTrack] = set()

    def admits(self, track: RemoteTrack, width: int, height: int) -> bool:
        if width * height <= self.max_pixels:
            return True
        self.refused += 1
        if track not in self._warned:
            self._warned.add(track)
            log.warning(
                "%s: leaving out %dx%d video from %r: over %d pixels",
                self.owner,
                width,
                height,
                track,
                self.max_pixels,
            )
        return False

    def track_ended(self, track: RemoteTrack) -> None:
        self._warned.discard(track)


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


class Received(Protocol):
    """What counts a track's frames as they arrive, before decoding
    (:class:`peer.media.encoded.EncodedTap`)."""

    frames: int
    first_frame_at: float | None
    decoding: bool

    @property
    def fps(self) -> float: ...

    @property
    def decoded_dropped(self) -> int: ...


class TrackTap:
    """Reads one remote track until it ends or ``stop()`` is awaited, handing each frame to
    ``consumers`` as ``remote``'s: a :class:`Sinks` (read live: consumers added later get
    the next frames) or a fixed list.

    ``frames``, ``first_frame_at`` and ``fps`` count the frames received: ``received``'s
    (the encoded frames, decoded or not) when given, else the decoded ones; ``decoded``
    counts the frames read here.
    """

    def __init__(
        self,
        remote: RemoteTrack,
        track: MediaStreamTrack,
        consumers: Sinks | Sequence[FrameConsumer] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        received: Received | None = None,
    ) -> None:
        if track.kind != remote.kind:
            raise ValueError(f"cannot tap a track of kind {track.kind!r} as {remote!r}")
        self.remote = remote
        self.peer = remote.peer
        self.track = track
        self.kind: Kind = remote.kind
        self.received = received
        self.decoded = 0
        self._decoded_first: float | None = None
        self._sinks = consumers if isinstance(consumers, Sinks) else Sinks(consumers)
        self._clock = clock
        self._meter = FpsMeter()
        self._task: asyncio.Task[None] | None = None
        self._ended = False

    @property
    def frames(self) -> int:
        return self.received.frames if self.received is not None else self.decoded

    @property
    def first_frame_at(self) -> float | None:
        return self.received.first_frame_at if self.received is not None else self._decoded_first

    @property
    def fps(self) -> float:
        if self.received is not None:
            return self.received.fps
        return self._meter.rate(self._clock())

    @property
    def decoding(self) -> bool:
        """Whether the track is being decoded now (``received`` decides; without it, while
        the tap reads)."""
        return self.received.decoding if self.received is not None else not self._ended

    @property
    def decoded_dropped(self) -> int:
        """Decoded frames dropped before this tap read them (its reader was behind)."""
        return self.received.decoded_dropped if self.received is not None else 0

    @property
    def ended(self) -> bool:
        return self._ended

    def start(self) -> None:
        if self._task is None and not self._ended:
            self._sinks.track_started(self.remote)
            name = f"tap {self.peer} {self.kind} {self.remote.index}"
            self._task = asyncio.create_task(self._read(), name=name)

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
        log.debug("tap %r started", self.remote)
        try:
            while True:
                frame = await self.track.recv()
                self._on_frame(frame)
        except MediaStreamError:
            log.info(
                "%r ended after %d frames (%d decoded)", self.remote, self.frames, self.decoded
            )
        finally:
            self._end()

    def _on_frame(self, frame: object) -> None:
        now = self._clock()
        self.decoded += 1
        if self._decoded_first is None:
            self._decoded_first = now
        self._meter.tick(now)
        if not isinstance(frame, av.AudioFrame | av.VideoFrame):
            return  # an encoded packet (passthrough): nothing for frame consumers
        self._sinks.put_frame(self.remote, frame)

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._sinks.track_ended(self.remote)
