"""What an :class:`peer.agent.Agent` tells its user, and the bounded queue that carries it.

Events are frozen dataclasses; match on their type. The queue never grows without bound:
when the consumer is slow the oldest event is dropped and counted (``dropped``), so a bot
that stops reading costs memory for at most ``maxsize`` events.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

# The data channel's events live beside the channel (it makes them); they are events of
# this module all the same: ``ev.DataReceived``, ``ev.DataDropped``, ``ev.ChannelOpened``.
from peer.datachannel import ChannelOpened as ChannelOpened
from peer.datachannel import DataDropped as DataDropped
from peer.datachannel import DataReceived as DataReceived
from peer.mesh import LinkState
from signaling.protocol import PeerId

if TYPE_CHECKING:
    from peer.media.timeline import SenderClock
    from peer.stats import PeerStats

log = logging.getLogger(__name__)

Kind = Literal["audio", "video"]
"""A track's media kind, as WebRTC names it."""


class RemoteTrack:
    """A track a remote peer sends. The agent already reads it (its TrackTap keeps aiortc's
    receive queue drained); call :meth:`subscribe` for a copy of your own, e.g. to send it
    back (echo) or to analyse it. Copies skip frames when you read slower than they come.
    ``id`` is the sender's track ID (from its SDP): :class:`TrackEnded` names it. ``index``
    tells a peer's tracks of one kind apart on one connection: 0 for its first (a camera),
    1 for the next (a screen share); a freed index is given again. One object per track,
    the same in :class:`TrackReceived` and in every frame consumer's calls, hashed by
    identity: consumers key what they hold by it.
    """

    def __init__(
        self,
        peer: PeerId,
        kind: Kind,
        subscribe: Callable[[], Any] | None = None,
        id: str = "",
        index: int = 0,
        keyframe: Callable[[], None] | None = None,
    ) -> None:
        self.peer = peer
        self.kind = kind
        self.id = id
        self.index = index
        self._subscribe = subscribe
        self._keyframe = keyframe
        #: The track's RTP clock on the sender's wall clock (from its RTCP sender reports),
        #: set by the agent's encoded tap; what puts a peer's audio and video in sync.
        self.sender_clock: SenderClock | None = None

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe of this (video) track now (an RTCP PLI); a no-op
        for audio or a track that is not received. Packet consumers need not call it
        (:mod:`peer.media.packets`: their first video packet is a keyframe already)."""
        if self._keyframe is not None:
            self._keyframe()

    def subscribe(self) -> Any:
        """A new ``MediaStreamTrack`` with this track's frames (unbuffered relay proxy)."""
        if self._subscribe is None:
            raise ValueError(f"{self!r} cannot be subscribed to")
        return self._subscribe()

    def __repr__(self) -> str:
        return f"RemoteTrack({self.peer!r}, {self.kind!r}, index={self.index})"


@dataclass(frozen=True)
class Joined:
    """We are in the room (again, when ``rejoin``); ``peers`` were there before us."""

    peers: tuple[PeerId, ...]
    rejoin: bool


@dataclass(frozen=True)
class SignalingLost:
    """The signaling connection dropped; the agent is reconnecting. Media keeps flowing."""

    close_code: int | None


@dataclass(frozen=True)
class PeerJoined:
    """``peer`` joined the room; the agent connects to it (the newcomer offers)."""

    peer: PeerId


@dataclass(frozen=True)
class PeerLeft:
    """``peer`` left the room; its connection, tracks and recording are released."""

    peer: PeerId


@dataclass(frozen=True)
class ConnectionStateChanged:
    """The media connection with ``peer`` changed state (connecting, connected, failed...)."""

    peer: PeerId
    state: LinkState


@dataclass(frozen=True)
class IceServerProblem:
    """A STUN/TURN server did not answer, or refused us (``reason`` says which): connections
    go without it until it answers a later check."""

    url: str
    reason: str


@dataclass(frozen=True)
class TrackReceived:
    """``peer`` sends a ``kind`` track; the agent already reads ``track`` (``subscribe()``:
    a copy)."""

    peer: PeerId
    kind: Kind
    track: RemoteTrack


@dataclass(frozen=True)
class TrackEnded:
    """``peer`` stopped sending the track ``track_id`` (:attr:`RemoteTrack.id`) on a live
    connection (a renegotiation made it inactive); copies of it end. A track sent again
    arrives as a new :class:`TrackReceived`."""

    peer: PeerId
    kind: Kind
    track_id: str


@dataclass(frozen=True)
class FirstFrame:
    """The first frame of ``track`` (``kind``, from ``peer``) arrived whole: its first
    encoded frame (for video a keyframe), whether or not the agent decodes the track (a
    decoded picture follows within the decode time when it does); ``seconds`` since our
    join began."""

    peer: PeerId
    kind: Kind
    seconds: float
    track: RemoteTrack


@dataclass(frozen=True)
class StatsReport:
    """Every ``stats_interval`` seconds: one ``PeerStats`` per remote peer."""

    peers: tuple[PeerStats, ...]


@dataclass(frozen=True)
class RoomMessage:
    """An application message another peer sent (any type the protocol does not define)."""

    sender: PeerId | None
    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """The agent gave up (e.g. a rejoin refused for good); it leaves the room."""

    reason: str


Event: TypeAlias = (
    Joined
    | SignalingLost
    | PeerJoined
    | PeerLeft
    | ConnectionStateChanged
    | IceServerProblem
    | TrackReceived
    | TrackEnded
    | FirstFrame
    | StatsReport
    | RoomMessage
    | DataReceived
    | DataDropped
    | ChannelOpened
    | Failed
)
"""Anything ``Agent.events()`` yields and listeners get: match on the class."""


#: Why a second reader is refused: each event is taken by one reader, so two would each
#: miss what the other took (and one could wait forever).
_ONE_READER = (
    "this event stream already has a reader; each event goes to one reader only: "
    "use agent.add_listener(callback) for a second consumer"
)


class EventQueue:
    """Bounded: a full queue drops its oldest event and counts it in ``dropped``.

    One reader at a time: a second concurrent iterator (or ``get``) is refused with a
    RuntimeError instead of silently splitting the events.
    """

    def __init__(self, maxsize: int = 256) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self._items: deque[Event] = deque(maxlen=maxsize)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._iterating = False
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Event) -> None:
        if self._closed:
            return
        if len(self._items) == self._items.maxlen:
            self.dropped += 1
        self._items.append(event)
        self._wake()

    def close(self) -> None:
        """End iteration once the queued events are consumed."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Event | None:
        """The next event, or None once closed and empty."""
        while not self._items:
            if self._closed:
                return None
            if self._waiter is not None:
                raise RuntimeError(_ONE_READER)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    async def __aiter__(self) -> AsyncIterator[Event]:
        if self._iterating:
            raise RuntimeError(_ONE_READER)
        self._iterating = True
        try:
            while (event := await self.get()) is not None:
                yield event
        finally:
            self._iterating = False


class EventHub:
    """Fans each event out to the stream (one bounded queue, one reader) and to every
    listener; a listener that raises is logged and the others still get the event.

    ``maxsize`` 0: no stream, listeners only. A stream nobody reads still keeps its last
    ``maxsize`` events, stats reports of every peer among them: held for no one
    (``meshpeer join``, which only listens)."""

    def __init__(self, maxsize: int = 256) -> None:
        self.queue = EventQueue(max(maxsize, 1))
        self.streaming = maxsize > 0
        self._listeners: list[Callable[[Event], None]] = []

    def add_listener(self, callback: Callable[[Event], None]) -> None:
        self._listeners.append(callback)

    def emit(self, event: Event) -> None:
        if self.streaming:
            self.queue.put(event)
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:
                log.exception("event listener failed on %s", type(event).__name__)

    def close(self) -> None:
        self.queue.close()
