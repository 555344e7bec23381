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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaRelay

from peer import events as ev
from peer import mesh
from peer.errors import MeshpeerError
from peer.events import Event, EventQueue, Kind, RemoteTrack
from peer.ice import IceServer, arrange, parse_ice_server, rtc_configuration
from peer.ice_probe import Check, IceProbe, Verdict
from peer.link import PeerLink
from peer.mesh import Action, LinkState, Role
from peer.signaling_client import SignalingClient
from peer.stats import PeerStats
from signaling.auth import read_claims
from signaling.protocol import (
    Answer,
    Candidate,
    Custom,
    Error,
    IceServers,
    Message,
    Offer,
    PeerId,
    PeerJoined,
    PeerLeft,
    PeerList,
    RoomId,
)

if TYPE_CHECKING:
    import av

    from peer.media.mosaic import Mosaic
    from peer.media.recorder import Recorder
    from peer.media.sources import LocalMedia
    from peer.media.tap import FrameConsumer

log = logging.getLogger(__name__)

#: Messages waiting per remote peer; a flood beyond this is dropped (and logged).
MAX_QUEUED_PER_PEER = 256


def random_peer_id() -> PeerId:
    return PeerId(f"peer-{secrets.token_hex(3)}")


class _FirstFrames:
    """A FrameConsumer that reports the first frame of each remote track, once."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._seen: set[tuple[PeerId, Kind]] = set()

    def put_frame(self, peer: PeerId, kind: Kind, frame: av.AudioFrame | av.VideoFrame) -> None:
        if (peer, kind) not in self._seen:
            self._seen.add((peer, kind))
            self._agent._emit(ev.FirstFrame(peer, kind, time.monotonic() - self._agent.joined_at))

    def track_ended(self, peer: PeerId, kind: Kind) -> None:
        self._seen.discard((peer, kind))


class Agent:
    """A headless peer in one room of a meshpeer (or reference) signaling server.

    ``media`` is what this peer sends to everyone (None: receive only). ``recorder`` and
    ``mosaic`` (from :mod:`peer.media`) and any other ``consumers`` get every remote frame.
    ``ice_servers`` are ``stun:``/``turn:`` URLs or :class:`IceServer`; none by default.
    Those the server hands out in ``peer-list`` (TURN with credentials minted for us) come
    after them. ``token`` is the access token of a server that requires one; without
    ``peer_id`` or ``room``, the token's are used.
    ``always_send`` negotiates sending audio and video even without local tracks, so
    :meth:`send_track` can send each peer something of its own later (an echo bot).
    Use it as an async context manager, or call :meth:`join` and :meth:`leave`.

    Read-only state for tests and dashboards: ``peer_id``; ``members`` (who the server
    says is in the room besides us); ``links`` (PeerId -> :class:`peer.link.PeerLink`, one
    per remote peer: ``state``, ``role``, ``tap("video")`` with ``frames``/``fps``);
    ``last_stats`` (the latest :class:`StatsReport` contents); ``signaling_connected``.
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
        consumers: Sequence[FrameConsumer] = (),
        event_queue_size: int = 256,
        stats_interval: float | None = 2.0,
        peer_left_grace: float = 0.5,
        always_send: bool = False,
        token: str | None = None,
    ) -> None:
        token_peer, token_room = read_claims(token) if token else (None, None)
        peer_id = peer_id or token_peer
        room = room or token_room
        self.peer_id = PeerId(peer_id) if peer_id else random_peer_id()
        self.room = RoomId(room) if room else None
        self.media = media
        self.recorder = recorder
        self.mosaic = mosaic
        self._own_servers = tuple(
            s if isinstance(s, IceServer) else parse_ice_server(s) for s in ice_servers
        )
        #: From the latest peer-list: the server's STUN/TURN, with our TURN credentials.
        self._handed_servers: tuple[IceServer, ...] = ()
        #: Failed connections per peer since the last one that worked: picks the TURN URL.
        self._failures: dict[PeerId, int] = {}
        #: Connections use only servers that answered a check (never wait on a dead one).
        self._probe = IceProbe(self._ice_verdict)
        self._consumers: list[FrameConsumer] = list(consumers)
        if recorder is not None:
            self._consumers.append(recorder)
        if mosaic is not None:
            self._consumers.append(mosaic)
        self._consumers.append(_FirstFrames(self))
        self.stats_interval = stats_interval
        self.peer_left_grace = peer_left_grace
        self.always_send = always_send
        self._queue = EventQueue(event_queue_size)
        self._listeners: list[Callable[[Event], None]] = []
        self.links: dict[PeerId, PeerLink] = {}
        #: Who the server says is in the room (besides us).
        self.members: set[PeerId] = set()
        self.joined_at = time.monotonic()
        #: When the first peer-list arrived (time.monotonic()).
        self.in_room_at: float | None = None
        self._relays: list[tuple[MediaRelay, MediaStreamTrack]] = []
        self._locks: dict[PeerId, asyncio.Lock] = {}
        self._backlog: dict[PeerId, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._grace: dict[PeerId, asyncio.TimerHandle] = {}
        self._timers: dict[PeerId, asyncio.TimerHandle] = {}  # pending re-offers
        self._reoffers: dict[PeerId, int] = {}
        self._stats_task: asyncio.Task[None] | None = None
        self._leave_task: asyncio.Task[None] | None = None
        self._left = asyncio.Event()
        self._signaling = SignalingClient(
            url,
            self.peer_id,
            self.room,
            on_message=self._on_message,
            on_joined=self._on_joined,
            on_lost=self._on_lost,
            token=token,
        )
        self.last_stats: tuple[PeerStats, ...] = ()

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
        self._relays = []
        if self.media is not None:
            for track in (self.media.video, self.media.audio):
                if track is not None:
                    self._relays.append((MediaRelay(), track))
        self._probe.check(self._own_servers)  # while signaling connects
        await self._signaling.connect()
        if self.stats_interval:
            self._stats_task = asyncio.get_running_loop().create_task(self._stats_loop())

    async def leave(self) -> None:
        """Leave the room and close every connection; the event stream ends after this.

        Safe to call more than once and from several tasks: all return once it is done.
        """
        self._spawn_leave()
        if self._leave_task is not None:
            await asyncio.shield(self._leave_task)

    async def _leave(self) -> None:
        for handle in (*self._grace.values(), *self._timers.values()):
            handle.cancel()
        self._grace.clear()
        self._timers.clear()
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        await self._signaling.close()
        await self._probe.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._close_link(p) for p in list(self.links)))
        self._queue.close()
        log.info("%s left", self.peer_id)

    def events(self) -> AsyncIterator[Event]:
        """The event stream (one shared bounded queue): ends after :meth:`leave`."""
        return self._queue.__aiter__()

    @property
    def dropped_events(self) -> int:
        """Events dropped because the consumer of :meth:`events` was too slow."""
        return self._queue.dropped

    def add_listener(self, callback: Callable[[Event], None]) -> None:
        """Also call ``callback(event)`` for every event, on the event loop (must not block)."""
        self._listeners.append(callback)

    @property
    def left(self) -> asyncio.Event:
        return self._left

    @property
    def signaling_connected(self) -> bool:
        return self._signaling.connected

    @property
    def reconnects(self) -> int:
        return self._signaling.reconnects

    def connection_states(self) -> dict[PeerId, LinkState]:
        return {peer: link.state for peer, link in self.links.items()}

    def subscribe(self, peer: PeerId, kind: Kind) -> MediaStreamTrack | None:
        """A copy of ``peer``'s ``kind`` track (e.g. to send it back), None if not received."""
        link = self.links.get(peer)
        return link.subscribe(kind) if link is not None else None

    def subscribe_local(self, kind: Kind) -> MediaStreamTrack | None:
        """A copy of our own ``kind`` track (e.g. a local preview), None if we send none."""
        if self.media is not None and not self._relays:
            raise MeshpeerError("the local tracks are relayed once the agent has joined")
        for relay, track in self._relays:
            if track.kind == kind:
                proxy: MediaStreamTrack = relay.subscribe(track, buffered=False)
                return proxy
        return None

    def send_track(self, peer: PeerId, kind: Kind, track: MediaStreamTrack) -> bool:
        """Send ``track`` to ``peer`` only, in place of what we sent it as ``kind``.

        No renegotiation: the connection needs a sending slot of that kind, which a local
        track gives, or ``always_send=True`` (e.g. an echo bot with no media of its own).
        Returns False when there is no connection or no slot.
        """
        link = self.links.get(peer)
        return link.send_track(kind, track) if link is not None else False

    async def call(self, peer: PeerId) -> None:
        """Open a fresh connection to ``peer`` by offering; the current one is replaced.

        The mesh does this by itself; this is for an application that wants to force a new
        connection. Both sides calling at once is glare, resolved as :mod:`peer.mesh` says.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def work() -> None:
            try:
                await self._offer(peer)
            finally:
                if not done.done():
                    done.set_result(None)

        if self._schedule(peer, work, "call"):
            await done

    async def stats(self) -> list[PeerStats]:
        """Sample every connection now (rates are since the previous sample)."""
        links = list(self.links.values())
        return list(await asyncio.gather(*(link.stats(self.joined_at) for link in links)))

    async def send_message(
        self, type_: str, data: dict[str, Any], to: PeerId | None = None
    ) -> bool:
        """Send an application message (e.g. ``chat``) to one peer or the whole room."""
        return await self._signaling.send(Custom(type_, self.peer_id, to, "", dict(data)))

    async def drop_signaling(self) -> None:
        """Drop the signaling socket as a network failure would (tests, demos)."""
        await self._signaling.drop_connection()

    # -- events ----------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self._queue.put(event)
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:
                log.exception("event listener failed on %s", type(event).__name__)

    # -- per-peer serial work ----------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    def _schedule(
        self, peer: PeerId, work: Callable[[], Coroutine[Any, Any, None]], what: str
    ) -> bool:
        """Run ``work`` after everything already scheduled for ``peer``, in order.

        False when dropped: the agent left, or too much is already waiting for ``peer``.
        """
        if self._left.is_set():
            return False
        if self._backlog.get(peer, 0) >= MAX_QUEUED_PER_PEER:
            log.warning("too much pending for %s: dropping %s", peer, what)
            return False
        self._backlog[peer] = self._backlog.get(peer, 0) + 1
        lock = self._locks.setdefault(peer, asyncio.Lock())

        async def run() -> None:
            try:
                async with lock:
                    await work()
            finally:
                self._backlog[peer] -= 1
                if self._backlog[peer] == 0:
                    del self._backlog[peer]
                    if not lock.locked():
                        self._locks.pop(peer, None)

        self._spawn(run(), f"{what} {peer}")
        return True

    # -- signaling callbacks (on the event loop, never blocking) -------------------------

    def _on_joined(self, peer_list: PeerList, rejoin: bool) -> None:
        if self.in_room_at is None:
            self.in_room_at = time.monotonic()
        self._handed_servers = peer_list.ice_servers
        self._probe.check(self._handed_servers)
        peers = tuple(p for p in peer_list.peers if p != self.peer_id)
        self._emit(ev.Joined(peers, rejoin))
        new = [p for p in peers if p not in self.members]
        self.members = set(peers)
        for peer in new:
            self._emit(ev.PeerJoined(peer))
        decisions = mesh.on_peer_list(self.peer_id, peers, self.connection_states())
        for peer, action in decisions.items():
            if action is Action.OFFER:
                self._schedule(peer, lambda p=peer: self._offer(p), "offer")  # type: ignore[misc]
            elif action is Action.CLOSE:
                self._schedule(peer, lambda p=peer: self._close_link(p), "close")  # type: ignore[misc]

    def _on_lost(self, close_code: int | None) -> None:
        if self._signaling.fatal is not None:
            self._emit(ev.Failed(str(self._signaling.fatal)))
            self._spawn_leave()
            return
        self._emit(ev.SignalingLost(close_code))
        if mesh.keep_after_signaling_closed(close_code):
            for peer, handle in list(self._grace.items()):
                handle.cancel()
                del self._grace[peer]
                log.info("kept the connection to %s: the server went away, not the peer", peer)

    def _spawn_leave(self) -> None:
        if self._leave_task is None:
            self._left.set()
            self._leave_task = asyncio.get_running_loop().create_task(self._leave())

    def _on_message(self, message: Message) -> None:
        if isinstance(message, Offer | Answer | Candidate):
            sender = message.sender
            if sender is None or sender == self.peer_id:
                return
            if isinstance(message, Offer):
                self._schedule(sender, lambda: self._answer(sender, message.sdp), "answer")
            elif isinstance(message, Answer):
                self._schedule(sender, lambda: self._apply_answer(sender, message.sdp), "apply")
            else:
                self._schedule(sender, lambda: self._candidate(sender, message), "candidate")
        elif isinstance(message, PeerJoined):
            self._peer_joined(message.peer_id)
        elif isinstance(message, PeerLeft):
            self._peer_left(message.peer_id)
        elif isinstance(message, IceServers):
            self._handed_servers = message.ice_servers  # fresh TURN credentials
            self._probe.check(self._handed_servers)
        elif isinstance(message, Custom):
            self._emit(ev.RoomMessage(message.sender, message.type, message.data))
        elif isinstance(message, Error):
            pass  # logged by the client; nothing here depends on it

    def _peer_joined(self, peer: PeerId) -> None:
        if peer == self.peer_id:
            return
        self.members.add(peer)
        handle = self._grace.pop(peer, None)
        if handle is not None:
            handle.cancel()  # it left and came back at once: a resume, keep the connection
        self._emit(ev.PeerJoined(peer))
        link = self.links.get(peer)
        action = mesh.on_peer_joined(link.state if link is not None else None)
        if action is Action.AWAIT_OFFER and link is not None:
            self._schedule(peer, lambda: self._close_link(peer), "close")

    def _peer_left(self, peer: PeerId) -> None:
        self.members.discard(peer)
        self._emit(ev.PeerLeft(peer))
        link = self.links.get(peer)
        action = mesh.on_peer_left(link.state if link is not None else None)
        if link is None and self.mosaic is not None:
            self.mosaic.remove_peer(peer)  # its connection was already closed, not forgotten
        if action is Action.CLOSE:
            self._schedule(peer, lambda: self._close_link(peer), "close")
        elif action is Action.CLOSE_AFTER_GRACE:
            old = self._grace.pop(peer, None)
            if old is not None:
                old.cancel()
            self._grace[peer] = asyncio.get_running_loop().call_later(
                self.peer_left_grace, self._grace_over, peer
            )

    def _ice_verdict(self, server: IceServer, check: Check) -> None:
        """A server check ended: report a bad one; offer again where a good one was missing."""
        if check.verdict is not Verdict.OK:
            log.warning("ICE server %s: %s; connections go without it", server.url, check.detail)
            self._emit(ev.IceServerProblem(server.url, check.detail))
            return
        log.info("ICE server %s answered", server.url)
        for peer, link in list(self.links.items()):
            # Connections made while the check ran lack this server (a TURN relay may be the
            # only way through): the side that offered them offers again, now with it.
            if (
                link.role is not Role.OFFERER
                or link.state is LinkState.CONNECTED
                or server.url in link.ice_urls  # fresh credentials for a URL it has: keep it
            ):
                continue
            if link.state is LinkState.OFFERING:
                # Its answer is on the way, and answers name no offer: a new offer now would
                # take the old offer's answer. Apply that answer first, then offer again.
                link.reoffer_when_answered = True
            else:
                self._schedule(peer, lambda p=peer: self._offer(p), "offer")  # type: ignore[misc]

    def _grace_over(self, peer: PeerId) -> None:
        self._grace.pop(peer, None)
        if peer not in self.members:
            self._schedule(peer, lambda: self._close_link(peer), "close")

    # -- negotiation (serial per peer) ---------------------------------------------------

    def _new_link(self, peer: PeerId, role: Role) -> PeerLink:
        tracks = [relay.subscribe(track, buffered=False) for relay, track in self._relays]
        known = self._own_servers + self._handed_servers
        self._probe.check(known)  # those that failed a while ago get another chance
        servers = arrange(self._probe.usable(known), self._failures.get(peer, 0))
        link = PeerLink(
            peer,
            role,
            rtc_configuration(servers),
            tracks,
            self._consumers,
            on_state=self._link_state,
            on_track=self._link_track,
            always_send=self.always_send,
            ice_servers=servers,
        )
        self.links[peer] = link
        return link

    async def _offer(self, peer: PeerId) -> None:
        if peer not in self.members:
            return
        await self._close_link(peer, forget=False)
        link = self._new_link(peer, Role.OFFERER)
        sdp = await link.make_offer()
        if self.links.get(peer) is not link:
            return
        await self._signaling.send(Offer("offer", self.peer_id, peer, sdp=sdp))

    async def _answer(self, peer: PeerId, sdp: str) -> None:
        link = self.links.get(peer)
        action = mesh.on_offer(self.peer_id, peer, link.state if link is not None else None)
        if action is Action.IGNORE:
            log.info("glare with %s: we are not polite, ignoring its offer", peer)
            return
        if link is not None:
            if link.state is LinkState.OFFERING:
                log.info("glare with %s: we are polite, dropping our offer", peer)
            await self._close_link(peer, forget=False)
        link = self._new_link(peer, Role.ANSWERER)
        try:
            answer = await link.accept_offer(sdp)
        except Exception as exc:  # a malformed offer must not take the agent down
            log.warning("cannot answer the offer of %s: %s", peer, exc)
            await self._close_link(peer, forget=False)
            return
        self._expect(peer, link)
        await self._signaling.send(Answer("answer", self.peer_id, peer, sdp=answer))

    async def _apply_answer(self, peer: PeerId, sdp: str) -> None:
        link = self.links.get(peer)
        if mesh.on_answer(link.state if link is not None else None) is not Action.APPLY:
            log.debug("stale answer from %s ignored", peer)
            return
        if link is None:  # pragma: no cover - on_answer applies only to an existing link
            return
        try:
            await link.accept_answer(sdp)
        except Exception as exc:
            log.warning("cannot apply the answer of %s: %s", peer, exc)
            return
        self._expect(peer, link)
        if link.reoffer_when_answered:
            self._schedule(peer, lambda: self._offer(peer), "offer")

    async def _candidate(self, peer: PeerId, message: Candidate) -> None:
        link = self.links.get(peer)
        state = link.state if link is not None else None
        action = mesh.on_candidate(state, link is not None and link.has_remote_description)
        if action is Action.IGNORE or link is None:
            log.debug("candidate from %s without a connection ignored", peer)
            return
        await link.add_candidate(message.candidate)

    def _expect(self, peer: PeerId, link: PeerLink) -> None:
        if self.recorder is not None and link.kinds_received:
            self.recorder.expect(peer, link.kinds_received)

    # -- link callbacks ------------------------------------------------------------------

    def _link_track(
        self, link: PeerLink, kind: Kind, relay: MediaRelay, track: MediaStreamTrack
    ) -> None:
        remote = RemoteTrack(link.remote, kind, lambda: relay.subscribe(track, buffered=False))
        self._emit(ev.TrackReceived(link.remote, kind, remote))

    def _link_state(self, link: PeerLink) -> None:
        peer = link.remote
        if self.links.get(peer) is not link:
            return
        self._emit(ev.ConnectionStateChanged(peer, link.state))
        if link.state is LinkState.CONNECTED:
            self._reoffers.pop(peer, None)
            self._failures.pop(peer, None)
        elif link.state is LinkState.FAILED:
            self._failures[peer] = self._failures.get(peer, 0) + 1
        action = mesh.on_connection_state(link.role, link.state, peer in self.members)
        if action is Action.CLOSE:
            self._schedule(peer, lambda: self._close_link(peer, only=link), "close")
        elif action is Action.AWAIT_REOFFER:
            log.info("connection to %s %s: waiting for its new offer", peer, link.state)
            self._schedule(peer, lambda: self._close_link(peer, forget=False, only=link), "close")
        elif action is Action.REOFFER:
            attempt = self._reoffers.get(peer, 0)
            self._reoffers[peer] = attempt + 1
            delay = mesh.reconnect_delay(attempt, random.random())
            log.info("connection to %s %s: offering again in %.2f s", peer, link.state, delay)

            async def reoffer() -> None:
                if self.links.get(peer) is link:  # not replaced by an offer meanwhile
                    await self._offer(peer)

            old = self._timers.pop(peer, None)
            if old is not None:
                old.cancel()
            self._timers[peer] = asyncio.get_running_loop().call_later(
                delay, lambda: self._schedule(peer, reoffer, "reoffer")
            )

    async def _close_link(
        self, peer: PeerId, *, forget: bool = True, only: PeerLink | None = None
    ) -> None:
        """Close ``peer``'s connection (if it is still ``only``) and release its media."""
        link = self.links.get(peer)
        if link is None or (only is not None and link is not only):
            return
        del self.links[peer]
        await link.close()
        if self.recorder is not None:
            try:
                await self.recorder.close_peer(peer)
            except Exception:  # the rest of the closing must happen all the same
                log.exception("closing the recording of %s failed", peer)
        if self.mosaic is not None and forget:
            self.mosaic.remove_peer(peer)
        self._emit(ev.ConnectionStateChanged(peer, LinkState.CLOSED))
        if forget:
            self._reoffers.pop(peer, None)
            self._failures.pop(peer, None)

    # -- stats -----------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        interval = self.stats_interval or 2.0
        while True:
            await asyncio.sleep(interval)
            self.last_stats = tuple(await self.stats())
            self._emit(ev.StatsReport(self.last_stats))


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
