"""The peer agent: joins a room, holds one RTCPeerConnection per remote peer, reports events.

A bot is a few lines::

    from peer.agent import Agent
    from peer.events import TrackReceived, PeerLeft
    from peer.media.sources import open_local_media

    media = open_local_media("synthetic", "tone", label="bot")
    async with Agent("ws://127.0.0.1:8080/ws", room="lobby", peer_id="bot", media=media) as agent:
        async for event in agent.events():
            match event:
                case TrackReceived(peer=peer, kind=kind):
                    print(peer, "sends", kind)
                case PeerLeft(peer=peer):
                    print(peer, "left")

What it does with the room (the decisions are :mod:`peer.mesh`, table-tested):

- It offers to every peer in its ``peer-list`` and answers the offers of those who come
  after it. Every remote track is read by a TrackTap (so aiortc's receive queue stays
  empty) feeding the configured consumers (recorder, mosaic) and :class:`FirstFrame`.
- ``peer-left`` closes that peer's connection and releases its tracks, taps and tasks
  (a working one after ``peer_left_grace`` seconds, see :mod:`peer.mesh`).
- A connection that fails (or that the other side closes while both are in the room) is
  offered again by the side that offered it, with backoff per peer; the other side closes
  its half and answers the new offer.
- A lost signaling connection is retried with backoff and the room joined again with the
  server's resume token; media connections that still work are kept.
- A new offer on a working connection (a track added or removed) is applied to it in place;
  what aiortc cannot renegotiate (an ICE restart, glare needing a rollback) is replaced by
  a new connection offered at once (:mod:`peer.renegotiation`).
- Every connection carries the ``meshpeer`` data channel (:meth:`Agent.send_data`,
  :class:`peer.events.DataReceived`; queues and framing in :mod:`peer.datachannel`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiortc import MediaStreamTrack

import peer.events as ev
import peer.link_stats as link_stats
from peer.channel_limits import DataLimits
from peer.datachannel import DataChannel
from peer.dataplane import DataPlane
from peer.errors import MeshpeerError
from peer.events import Event, EventHub, Kind
from peer.ice import IceServer, parse_ice_server
from peer.link import PeerLink
from peer.machine import RoomMachine
from peer.media import readers
from peer.media.encoder_group import EncoderStats
from peer.media.encoders import Vp8Settings
from peer.media.fanout import Encoding
from peer.media.tap import Consumer, FirstFrames, Sinks
from peer.mesh import LinkState
from peer.negotiation import Negotiator
from peer.publishing import Publishing
from peer.room import Room
from peer.room_io import RoomIO
from peer.serial import PeerWork
from peer.signaling_client import SignalingClient
from peer.stats import PeerStats, report_every
from peer.timers import PeerTimers
from peer.tokens import read_claims
from signaling.protocol import Custom, Message, PeerId, PeerList, RoomId

if TYPE_CHECKING:
    from peer.media.mosaic import Mosaic
    from peer.media.recorder import Recorder
    from peer.media.sources import LocalMedia

log = logging.getLogger(__name__)


def random_peer_id() -> PeerId:
    return PeerId(f"peer-{secrets.token_hex(3)}")


class Agent:
    """A headless peer in one room of a meshpeer (or reference) signaling server.

    ``media`` is what this peer sends to everyone (None: receive only). ``recorder`` and
    ``mosaic`` (from :mod:`peer.media`) and any other ``consumers`` get every remote frame.
    ``ice_servers`` are ``stun:``/``turn:`` URLs or :class:`IceServer`; none by default.
    Those the server hands out in ``peer-list`` (TURN with credentials minted for us) come
    after them. ``token`` is the access token of a server that requires one; without
    ``peer_id`` or ``room``, the token's are used.
    ``encoding``: each source is encoded once for every connection (shared, the default)
    or once per connection (per-peer, aiortc's way; for comparison), see
    :mod:`peer.media.fanout`; ``vp8`` (:class:`peer.media.encoders.Vp8Settings`) tunes
    the shared VP8 encoder's speed and denoiser.
    ``always_send`` negotiates sending audio and video even without local tracks, so
    :meth:`send_track` can send each peer something of its own later (an echo bot).
    ``receive=False`` makes a send-only peer: its connections ask no one for media, so
    the others' uplinks are spared sending it and it receives and decodes nothing (a
    broadcaster in a room of browsers); it cannot have consumers.
    ``data_limits`` (:class:`peer.channel_limits.DataLimits`) bounds the data channels'
    queues (:meth:`send_data`, :meth:`open_channel`).
    Use it as an async context manager, or call :meth:`join` and :meth:`leave`.

    Read-only state for tests and dashboards: ``peer_id``; ``members`` (who the server
    says is in the room besides us); ``links`` (PeerId -> :class:`peer.link.PeerLink`, one
    per remote peer: ``state``, ``role``, ``tap("video")`` with ``frames``/``fps``);
    ``ice_servers`` (what new connections may use); ``last_stats`` (the latest
    :class:`StatsReport` contents); ``signaling_connected``.

    The pieces, each readable alone: :mod:`peer.events` (the event stream and listeners),
    :mod:`peer.serial` (per-peer serial work), :mod:`peer.negotiation` (the connections),
    :mod:`peer.timers` (grace and re-offer timers), :func:`peer.stats.report_every`,
    :mod:`peer.machine` and :mod:`peer.room_io` (what the signaling server says about the
    room, decided and carried out), :mod:`peer.dataplane` (the data channels).
    This class is the API and the wiring.
    """

    def __init__(
        self,
        url: str,
        *,
        room: str | None = None,
        peer_id: str | None = None,
        media: LocalMedia | None = None,
        ice_servers: Sequence[IceServer | str] = (),
        recorder: Recorder | None = None,
        mosaic: Mosaic | None = None,
        consumers: Sequence[Consumer] = (),
        event_queue_size: int = 256,
        stats_interval: float | None = 2.0,
        peer_left_grace: float = 0.5,
        always_send: bool = False,
        receive: bool = True,
        token: str | None = None,
        encoding: Encoding = Encoding.SHARED,
        vp8: Vp8Settings | None = None,
        data_limits: DataLimits | None = None,
    ) -> None:
        if not receive and (recorder is not None or mosaic is not None or consumers):
            raise ValueError("a send-only agent (receive=False) has nothing to give consumers")
        token_peer, token_room = read_claims(token) if token else (None, None)
        peer_id = peer_id or token_peer
        room = room or token_room
        self.peer_id = PeerId(peer_id) if peer_id else random_peer_id()
        self.room = RoomId(room) if room else None
        self.media = media
        self.recorder = recorder
        self.mosaic = mosaic
        self.stats_interval = stats_interval
        self.peer_left_grace = peer_left_grace
        self.always_send = always_send
        self.receive = receive
        self.encoding = encoding
        self.vp8 = vp8
        #: What we send: the local sources and the tracks given to send_track/add_track.
        self._publishing = Publishing(encoding, vp8)
        #: Everything known about each other peer, one record each (:mod:`peer.room`).
        self._room = Room()
        self.joined_at = time.monotonic()
        #: When the first peer-list arrived (time.monotonic()).
        self.in_room_at: float | None = None
        self.last_stats: tuple[PeerStats, ...] = ()
        self._hub = EventHub(event_queue_size)
        self._machine = RoomMachine(self.peer_id, self._room)
        self._work = PeerWork(self._room)
        self._timers = PeerTimers(self._room)
        #: The data channels, kept in the records: a meshpeer channel per peer, and extras.
        self._data = DataPlane(self._room, self._emit, data_limits)
        self._signaling = SignalingClient(
            url,
            self.peer_id,
            self.room,
            on_message=self._on_message,
            on_joined=self._on_joined,
            on_lost=self._on_lost,
            token=token,
        )
        consumer_list: list[Consumer] = list(consumers)
        if recorder is not None:
            consumer_list.append(recorder)
        if mosaic is not None:
            consumer_list.append(mosaic)
        consumer_list.append(FirstFrames(self._emit, lambda: self.joined_at))
        self._sinks = Sinks(consumer_list)
        self._negotiator = Negotiator(
            self.peer_id,
            machine=self._machine,
            send=self._signaling.send,
            emit=self._emit,
            work=self._work,
            timers=self._timers,
            sinks=self._sinks,
            data=self._data,
            publishing=self._publishing,
            own_servers=[
                s if isinstance(s, IceServer) else parse_ice_server(s) for s in ice_servers
            ],
            always_send=always_send,
            receive=receive,
        )
        #: Carries out the room machine's results for what the server says (:mod:`peer.room_io`).
        self._room_io = RoomIO(
            machine=self._machine,
            negotiator=self._negotiator,
            work=self._work,
            timers=self._timers,
            sinks=self._sinks,
            data=self._data,
            emit=self._emit,
            grace=lambda: self.peer_left_grace,
        )
        self._stats_task: asyncio.Task[None] | None = None
        self._leave_task: asyncio.Task[None] | None = None
        self._left = asyncio.Event()

    # -- public API ----------------------------------------------------------------

    async def __aenter__(self) -> Agent:
        await self.join()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.leave()

    async def join(self) -> None:
        """Join the room. Raises SignalingError (unreachable) or JoinRefused (taken, full)."""
        self.joined_at = time.monotonic()
        self._publishing.start(self.media)
        self._negotiator.check_own_servers()  # while signaling connects
        await self._signaling.connect()
        if self.stats_interval:
            self._stats_task = asyncio.get_running_loop().create_task(
                report_every(self.stats_interval, self.stats, self._stats_sampled)
            )

    async def leave(self) -> None:
        """Leave the room and close every connection; the event stream ends after this.

        Safe to call more than once and from several tasks: all return once it is done.
        """
        self._spawn_leave()
        if self._leave_task is not None:
            await asyncio.shield(self._leave_task)

    async def _leave(self) -> None:
        self._timers.cancel_all()
        if self._stats_task is not None:
            self._stats_task.cancel()
            await asyncio.gather(self._stats_task, return_exceptions=True)
        await self._signaling.close()
        await self._negotiator.close()
        await self._work.close()
        await self._negotiator.close_all()
        self._publishing.close()
        self._hub.close()
        log.info("%s left", self.peer_id)

    def events(self) -> AsyncIterator[Event]:
        """The event stream (one bounded queue, one reader): ends after :meth:`leave`.
        RuntimeError with ``event_queue_size=0`` (listeners only)."""
        if not self._hub.streaming:
            raise RuntimeError("this agent has no event stream (event_queue_size=0)")
        return self._hub.queue.__aiter__()

    @property
    def dropped_events(self) -> int:
        """Events dropped because the consumer of :meth:`events` was too slow."""
        return self._hub.queue.dropped

    def add_listener(self, callback: Callable[[Event], None]) -> None:
        """Also call ``callback(event)`` for every event, on the event loop (must not block)."""
        self._hub.add_listener(callback)

    @property
    def sinks(self) -> Sinks:
        """Every remote track's frames go to these consumers: ``sinks.add(consumer)`` at any
        time starts with the tracks live now (``track_started``), ``sinks.remove`` stops."""
        return self._sinks

    @property
    def members(self) -> set[PeerId]:
        """Who the server says is in the room (besides us)."""
        return self._room.members

    @property
    def links(self) -> dict[PeerId, PeerLink]:
        """The live link to each remote peer, by ID (read only: the agent owns them)."""
        return self._room.links

    @property
    def ice_servers(self) -> tuple[IceServer, ...]:
        """Ours, then the server's (with our TURN credentials): what connections may use,
        once each has answered its check."""
        return self._negotiator.ice_servers

    @property
    def left(self) -> asyncio.Event:
        """Set once the agent has left the room (``leave()``, ``Failed``, or the context's end)."""
        return self._left

    @property
    def signaling_connected(self) -> bool:
        """Whether the signaling WebSocket is up now (media flows on while it is down)."""
        return self._signaling.connected

    @property
    def reconnects(self) -> int:
        """How many times the signaling connection was made again after a loss."""
        return self._signaling.reconnects

    def connection_states(self) -> dict[PeerId, LinkState]:
        """Each remote peer's media connection state, by ID."""
        return {peer: link.state for peer, link in self.links.items()}

    def subscribe(self, peer: PeerId, kind: Kind) -> MediaStreamTrack | None:
        """A copy of ``peer``'s ``kind`` track (e.g. to send it back), None if not received."""
        link = self.links.get(peer)
        return link.received.subscribe(kind) if link is not None else None

    def subscribe_local(self, kind: Kind) -> MediaStreamTrack | None:
        """A copy of our own ``kind`` track (e.g. a local preview), None if we send none."""
        return self._publishing.local(kind, self.media)

    def mute_audio(self, muted: bool = True) -> None:
        """Send silence in place of our audio (``False``: the sound again): at once, on
        every connection, without renegotiating. The ``--display`` window's ``m`` key."""
        self._mute("audio", muted)

    def mute_video(self, muted: bool = True) -> None:
        """Send black in place of our video (``False``: the picture again), as
        :meth:`mute_audio` does. The ``--display`` window's ``v`` key."""
        self._mute("video", muted)

    @property
    def muted(self) -> frozenset[Kind]:
        """The kinds we send as silence or black (:meth:`mute_audio`, :meth:`mute_video`)."""
        return self._publishing.muted

    def _mute(self, kind: Kind, muted: bool) -> None:
        was = kind in self._publishing.muted
        self._publishing.mute(kind, muted)
        if self.mosaic is not None:
            self.mosaic.set_local_muted(self._publishing.muted)
        if was != muted:
            state = {"audio": "microphone", "video": "camera"}[kind]
            log.info("%s: %s %s", self.peer_id, state, "off" if muted else "on")

    def send_track(self, peer: PeerId, kind: Kind, track: MediaStreamTrack) -> bool:
        """Send ``track`` to ``peer`` only, in place of what we sent it as ``kind``.

        No renegotiation: the connection needs a sending slot of that kind, which a local
        track gives, or ``always_send=True`` (e.g. an echo bot with no media of its own).
        Returns False when there is no connection or no slot. A track sent to several
        peers is encoded once for all of them (with ``encoding`` shared).
        """
        link = self.links.get(peer)
        if link is None:
            return False
        return link.send_track(kind, self._publishing.sent(track).track())

    async def add_track(self, peer: PeerId, track: MediaStreamTrack) -> bool:
        """Send ``track`` to ``peer`` as one more track (a second video, a screen): the live
        connection is renegotiated in place, and the peer gets it as a new track while the
        others keep flowing. False without a live connection (or while an offer of ours is
        out on it). Encoded once for every peer it goes to, as with :meth:`send_track`.
        """
        if peer not in self.links:
            return False
        publisher = self._publishing.sent(track)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def work() -> None:
            added = False
            copy = publisher.track()
            try:
                added = await self._negotiator.add_track(peer, copy)
            finally:
                if not added:
                    copy.stop()
                if not done.done():
                    done.set_result(added)

        if not self._schedule(peer, work, "add-track"):
            return False
        return await done

    def publish(self, track: MediaStreamTrack) -> None:
        """Send ``track`` (audio or video) to every peer, present and future, as one more
        track, encoded once for all; kept when a connection is replaced. Live connections
        are renegotiated in place. Publishing a published track again does nothing."""
        if self._publishing.publish(track):
            self._negotiator.sync_all()

    def unpublish(self, track: MediaStreamTrack) -> None:
        """Stop sending a published ``track`` to everyone (renegotiated in place: each peer
        gets :class:`peer.events.TrackEnded`). ValueError if it is not published."""
        self._publishing.unpublish(track)
        self._negotiator.sync_all()

    def video_frames(
        self, peer: PeerId | str | None = None, *, format: str = "bgr24"
    ) -> AsyncIterator[readers.ReceivedVideo]:
        """Received video as numpy arrays (``format``: bgr24, rgb24 or gray), of ``peer`` or
        of everyone: always the newest frame (``skipped`` counts the others), converted on a
        thread of the iterator's own. Ends when that peer leaves, or when we do. Heavy work
        on the arrays belongs in a thread too (``asyncio.to_thread``). See
        :mod:`peer.media.readers`."""
        who = None if peer is None else PeerId(peer)
        return readers.video_frames(self._sinks, self._left, who, format)

    def audio_frames(
        self,
        peer: PeerId | str | None = None,
        *,
        sample_rate: int = 16000,
        channels: int = 1,
        block_ms: int = 20,
    ) -> AsyncIterator[readers.ReceivedAudio]:
        """Received audio as int16 blocks of ``block_ms`` (``(n, channels)``), resampled,
        without gaps; up to 5 s of it wait for a slow reader, then the oldest blocks go
        (``dropped``). Ends when that peer leaves, or when we do. See :mod:`peer.media.readers`."""
        who = None if peer is None else PeerId(peer)
        return readers.audio_frames(self._sinks, self._left, who, sample_rate, channels, block_ms)

    def encoder_stats(self) -> list[EncoderStats]:
        """The shared encoders running now, one per source and codec."""
        return self._publishing.stats()

    async def call(self, peer: PeerId) -> None:
        """Open a fresh connection to ``peer`` by offering; the current one is replaced.

        The mesh does this by itself; this is for an application that wants to force a new
        connection. Both sides calling at once is glare, resolved as :mod:`peer.mesh` says.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def work() -> None:
            try:
                await self._negotiator.offer(peer)
            finally:
                if not done.done():
                    done.set_result(None)

        if self._schedule(peer, work, "call"):
            await done

    async def stats(self) -> list[PeerStats]:
        """Sample every connection now (rates are since the previous sample)."""
        samples = [
            link_stats.sample(record.link, record.sampler, self.joined_at)
            for record in self._room
            if record.link is not None and record.sampler is not None
        ]
        return list(await asyncio.gather(*samples))

    async def send_message(
        self, type_: str, data: dict[str, Any], to: PeerId | None = None
    ) -> bool:
        """Send an application message (e.g. ``chat``) to one peer or the whole room."""
        return await self._signaling.send(Custom(type_, self.peer_id, to, "", dict(data)))

    def send_data(self, data: str | bytes, to: PeerId | str | None = None) -> int:
        """Send ``data`` to peer ``to``, or to everyone, on the ``meshpeer`` data channel.

        Never waits: every peer has its own bounded queue (docs/PROTOCOL.md 16.3), so a slow
        one holds up nobody. Returns how many peers it was queued for; a peer whose queue is
        full is left out and reported (:class:`peer.events.DataDropped`), as is a message
        that finds no open channel within ``data_limits.wait`` seconds (10). ``to`` not in
        the room: 0. The peer gets it whole, ``str`` as ``str`` and ``bytes`` as ``bytes``,
        in a :class:`peer.events.DataReceived`; up to 16 MiB (larger raises MeshpeerError).
        """
        return self._data.send_data(data, None if to is None else PeerId(to))

    def open_channel(
        self,
        peer: PeerId | str,
        label: str,
        *,
        ordered: bool = True,
        max_retransmits: int | None = None,
    ) -> DataChannel:
        """An extra data channel to ``peer`` on the current connection, e.g. unreliable
        telemetry (``ordered=False, max_retransmits=0``); the peer gets its messages as
        :class:`peer.events.DataReceived` with ``channel=label``.

        ``send`` on it queues (bounded, never waits) raw messages: no framing, at most
        16 KiB each (larger raises MeshpeerError). It closes with the connection; a
        replaced connection does not carry it over (open it again when the new connection's
        ``meshpeer`` channel opens: :class:`peer.events.ChannelOpened`).
        Raises MeshpeerError when there is no connection to ``peer``.
        """
        return self._data.open_channel(
            PeerId(peer), label, ordered=ordered, max_retransmits=max_retransmits
        )

    async def drop_signaling(self) -> None:
        """Drop the signaling socket as a network failure would (tests, demos)."""
        await self._signaling.drop_connection()

    # -- plumbing ------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._hub.emit(event)

    def _schedule(
        self, peer: PeerId, work: Callable[[], Coroutine[Any, Any, None]], what: str
    ) -> bool:
        return not self._left.is_set() and self._work.schedule(peer, work, what)

    def _stats_sampled(self, stats: tuple[PeerStats, ...]) -> None:
        self.last_stats = stats
        self._emit(ev.StatsReport(stats))

    # -- signaling callbacks (on the event loop, never blocking) -------------------------

    def _on_joined(self, peer_list: PeerList, rejoin: bool) -> None:
        if self.in_room_at is None:
            self.in_room_at = time.monotonic()
        self._room_io.joined(peer_list, rejoin)

    def _on_lost(self, close_code: int | None) -> None:
        if self._signaling.fatal is not None:
            self._emit(ev.Failed(str(self._signaling.fatal)))
            self._spawn_leave()
            return
        self._room_io.signaling_lost(close_code)

    def _spawn_leave(self) -> None:
        if self._leave_task is None:
            self._left.set()
            self._work.closed = True  # leaving: nothing new for any peer from now on
            self._data.closed = True
            self._leave_task = asyncio.get_running_loop().create_task(self._leave())

    def _on_message(self, message: Message) -> None:
        if not self._left.is_set():
            self._room_io.on_message(message)


async def run_until(agent: Agent, stop: asyncio.Event, duration: float | None) -> None:
    """Wait until ``stop`` is set, ``duration`` seconds pass or the agent leaves."""
    waits = [
        asyncio.ensure_future(stop.wait()),
        asyncio.ensure_future(agent.left.wait()),
    ]
    try:
        await asyncio.wait(waits, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()


__all__ = ["Agent", "MeshpeerError", "run_until"]
