"""The aiohttp adapter: WebSocket frames in, session decisions out, bounded queues to each client.

Everything the protocol decides lives in :mod:`signaling.session`, :mod:`signaling.rooms`
and :mod:`signaling.registry`; this module only moves frames and keeps time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from signaling.admission import IpGate, OriginPolicy, client_address
from signaling.auth import TokenVerifier, authorize
from signaling.connection import Connection, Flusher
from signaling.endpoints import STATIC_DIR as STATIC_DIR
from signaling.endpoints import HttpEndpoints, add_security_headers, revalidate_page
from signaling.ice import IceServer
from signaling.metrics import (
    MAX_TYPE_LABELS,
    OTHER_TYPE_LABEL,
    Metrics,
    ServerCollector,
    ServerState,
    metrics_registry,
)
from signaling.protocol import (
    CloseCode,
    Error,
    ErrorCode,
    IceServers,
    PeerId,
    RoomId,
    serialize,
)
from signaling.reasons import LeaveReason, Refusal
from signaling.registry import LocalRegistry, Registry
from signaling.rooms import Refused
from signaling.session import Forward, JoinRequest, Limits, Reply, Session
from signaling.turn import TurnMinter

#: Client-chosen strings (peer IDs, rooms, forwarded addresses) are logged with %r: quoted
#: and escaped, so no name can forge a log line (names with control characters are refused
#: anyway, signaling.protocol.check_name).
log = logging.getLogger(__name__)

#: Frames above max_frame_bytes get an error and the connection lives on; frames above this
#: multiple of it are refused by the transport (close 1009) so memory stays bounded.
HARD_LIMIT_FACTOR = 4

#: Allocations between young-generation collections while serving (Python's default: 700).
#: Relaying makes a few short-lived containers per message, nearly all freed by reference
#: counting; collecting every 700 cost ~7% of the CPU per message at saturation.
RELAY_GC_THRESHOLD = 7000


async def _relay_gc_threshold(app: web.Application) -> AsyncIterator[None]:
    """Collect the young generation less often while the server runs; restore it after."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], RELAY_GC_THRESHOLD), *before[1:])
    yield
    gc.set_threshold(*before)


@dataclass(frozen=True)
class ServerConfig:
    """What a server is run with (``meshpeer serve``'s flags); the defaults are its defaults."""

    limits: Limits = field(default_factory=Limits)
    #: ICE servers handed to every peer (``peer-list``, ``/config.json``); none by default.
    ice_servers: Sequence[IceServer] = ()
    #: When set, every join needs an HS256 access token signed with it (signaling.auth).
    auth_secret: bytes | None = None
    #: With auth on, tokens must name this audience (``aud``); None: tokens naming any are
    #: refused (minted for another service that shares the secret).
    auth_audience: str | None = None
    #: Browser origins allowed to open a WebSocket besides the server's own; ``"*"``: any.
    allowed_origins: Sequence[str] = ()
    #: The URL users of a reverse proxy reach the page at: its origin is the server's own too.
    public_url: str | None = None
    #: Count clients by the last X-Forwarded-For entry (behind a reverse proxy you run).
    trust_proxy: bool = False
    #: TURN URLs with per-peer credentials minted from a secret shared with the TURN server.
    turn: TurnMinter | None = None
    #: Sharing rooms with other nodes, a node shutting down holds its members this many
    #: seconds for them to resume on another node (the agent and the page rejoin within a
    #: second).
    handover: float = 3.0


class SignalingServer:
    """Owns the registry, the metrics and the open connections of one server process."""

    def __init__(self, config: ServerConfig | None = None, registry: Registry | None = None):
        self.config = config or ServerConfig()
        self.limits = self.config.limits
        self.registry: Registry = registry or LocalRegistry(self.limits.max_peers)
        self.metrics = Metrics()
        #: This server's own registry (not the library's global one): /metrics reads it.
        self.metrics_registry = metrics_registry(ServerCollector(self.metrics, self.metrics_state))
        self.connections: set[Connection] = set()
        #: Writes every connection's queued frames, once per event-loop pass.
        self.flusher = Flusher()
        self.started = time.monotonic()
        self.shutting_down = False
        #: Connections closed by a shutdown whose memberships wait for them to resume elsewhere.
        self._handing_over: set[Connection] = set()
        secret = self.config.auth_secret
        self.verifier = (
            TokenVerifier(secret, audience=self.config.auth_audience)
            if secret is not None
            else None
        )
        self.origins = OriginPolicy.of(self.config.allowed_origins, self.config.public_url)
        #: An X-Forwarded-For value that is not an address is logged the first time only.
        self._bad_forwarded_logged = False
        self.ip_gate = IpGate(self.limits.ip_connections, self.limits.ip_connects_per_minute)

    def metrics_state(self) -> ServerState:
        """The gauges of this moment, for a /metrics scrape."""
        rooms, peers = self.registry.counts()
        return ServerState(
            rooms=rooms,
            peers=peers,
            connections=len(self.connections),
            uptime=time.monotonic() - self.started,
            cluster=self.registry.cluster_stats(),
        )

    def ice_servers_for(
        self, peer: PeerId, now: float, until: float | None = None
    ) -> tuple[IceServer, ...]:
        """What a peer is handed: the static servers, then TURN with credentials for it that
        last no longer than its access token (accepted until ``until``)."""
        static = tuple(self.config.ice_servers)
        turn = self.config.turn
        return static + turn.servers_for(peer, now, until) if turn is not None else static

    def app(self) -> web.Application:
        """The aiohttp app: ``/ws``, ``/healthz``, ``/metrics``, ``/config.json`` and the page."""
        app = web.Application()
        app.router.add_get("/ws", self.handle_ws)
        http = HttpEndpoints(self)
        app.router.add_get("/healthz", http.health)
        app.router.add_get("/metrics", http.metrics)
        app.router.add_get("/config.json", http.config)
        if (STATIC_DIR / "index.html").exists():
            app.router.add_get("/", http.index)
            app.router.add_static("/static/", STATIC_DIR)
            app.on_response_prepare.append(revalidate_page)
        app.on_response_prepare.append(add_security_headers)
        app.on_shutdown.append(self.shutdown)
        app.cleanup_ctx.append(_relay_gc_threshold)
        app.cleanup_ctx.append(self._registry_running)
        return app

    async def _registry_running(self, app: web.Application) -> AsyncIterator[None]:
        """The registry starts before the first connection and stops after shutdown's
        leaves (on_shutdown runs before cleanup)."""
        await self.registry.start()
        yield
        await self.registry.close()

    # -- WebSocket --------------------------------------------------------------
    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        """``GET /ws``: admit the WebSocket (origin, per-address caps), then serve it."""
        headers = request.headers
        client = client_address(
            request.remote, headers.getall("X-Forwarded-For", []), self.config.trust_proxy
        )
        address = client.address
        if client.unusable is not None and not self._bad_forwarded_logged:
            self._bad_forwarded_logged = True
            log.warning(
                "X-Forwarded-For ends in %r, not an address: counting the proxy's %r "
                "(check the proxy; logged once)",
                client.unusable[:100],
                address,
            )
        origin = headers.get("Origin")
        if not self.origins.admits(origin, request.scheme, headers.get("Host")):
            return self._refuse(Refusal.ORIGIN, address, f"origin {origin!r} is not allowed")
        refusal = self.ip_gate.open(address, time.monotonic())
        if refusal is not None:
            return self._refuse(refusal, address, "too many connections from your address")
        try:
            return await self._serve_ws(request, address)
        finally:
            self.ip_gate.close(address)

    def _refuse(self, reason: Refusal, address: str, text: str) -> web.Response:
        self.metrics.refused[reason] += 1
        log.info("refused a WebSocket from %r: %s", address, reason)
        if reason is Refusal.ORIGIN:
            return web.Response(status=403, text=text + "\n")
        # Connections free up as they close; a minute's attempts, within a minute.
        retry = "5" if reason is Refusal.IP_CONNECTIONS else "30"
        return web.Response(status=429, text=text + "\n", headers={"Retry-After": retry})

    async def _serve_ws(self, request: web.Request, address: str) -> web.WebSocketResponse:
        limits = self.limits
        ws = web.WebSocketResponse(
            autoping=False,
            autoclose=False,
            heartbeat=limits.heartbeat,
            max_msg_size=limits.max_frame_bytes * HARD_LIMIT_FACTOR,
        )
        await ws.prepare(request)
        if self.shutting_down:
            await ws.close(code=CloseCode.GOING_AWAY)
            return ws
        loop = asyncio.get_running_loop()
        room_param = request.query.get("room") or None
        session = Session(
            limits,
            loop.time(),
            RoomId(room_param) if room_param else None,
            request.query.get("token") or None,
        )
        conn = Connection(ws, request, session, self.metrics, address, self.flusher)
        self.connections.add(conn)
        self.metrics.connections_total += 1
        join_timer = loop.call_later(limits.join_timeout, self._join_timed_out, conn)
        reason = LeaveReason.DROPPED
        try:
            reason = await self._read_loop(ws, conn, session)
        finally:
            join_timer.cancel()
            self.connections.discard(conn)
            session.closed()
            await self._leave(conn, conn.reason or reason)
            await conn.stop()
        return ws

    def _join_timed_out(self, conn: Connection) -> None:
        decision = conn.session.join_timed_out()
        if isinstance(decision, Reply):
            _reply(conn, decision)

    async def _read_loop(
        self, ws: web.WebSocketResponse, conn: Connection, session: Session
    ) -> LeaveReason:
        clock = asyncio.get_running_loop().time
        registry = self.registry
        routed = self.metrics.routed
        audience = registry.others
        text_frames = WSMsgType.TEXT  # an enum member lookup costs ~0.1 us on Python 3.11
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is text_frames:
                conn.frames_heard += 1
                room = session.room  # None until joined
                # A broadcast costs its size times the others in the room (byte budget).
                others = audience(room) if room is not None else 0
                decision = session.receive(msg.data, clock(), others)
                if type(decision) is Forward:
                    sender, to = session.peer_id, decision.to
                    if room is None or sender is None:  # pragma: no cover - Forward => joined
                        continue
                    if to is None:
                        registry.broadcast(room, sender, decision.data)
                    elif not registry.send(room, to, decision.data):
                        conn.send_error(
                            Error(ErrorCode.UNKNOWN_PEER, f"no peer '{to}' in room '{room}'")
                        )
                        continue
                    label = decision.type  # client-chosen: a bounded set of labels
                    if label not in routed and len(routed) >= MAX_TYPE_LABELS:
                        label = OTHER_TYPE_LABEL
                    routed[label] += 1
                elif isinstance(decision, JoinRequest):
                    await self._join(conn, session, decision)
                elif isinstance(decision, Reply):
                    _reply(conn, decision)
            elif kind is WSMsgType.PING:
                conn.frames_heard += 1
                await ws.pong(msg.data)
            elif kind is WSMsgType.PONG:
                conn.frames_heard += 1
            elif kind is WSMsgType.BINARY:
                conn.frames_heard += 1
                refused = session.receive_binary(clock())
                if isinstance(refused, Reply):
                    _reply(conn, refused)
            elif kind is WSMsgType.CLOSE:
                if conn.close_sent:
                    conn.handshake_done()
                else:  # the client closes: answer it (autoclose is off so that we can tell)
                    await ws.close(drain=False)
                return LeaveReason.CLOSED
            elif kind is WSMsgType.ERROR:
                exc = msg.data
                if isinstance(exc, TimeoutError):
                    return LeaveReason.HEARTBEAT
                if getattr(exc, "code", None) == CloseCode.MESSAGE_TOO_BIG:
                    return LeaveReason.TOO_BIG
                return LeaveReason.DROPPED
            else:  # CLOSED, CLOSING
                return LeaveReason.DROPPED

    async def _join(self, conn: Connection, session: Session, request: JoinRequest) -> None:
        now = time.time()
        admitted = authorize(request, self.verifier, now)
        if isinstance(admitted, Reply):
            _reply(conn, session.refused(admitted.error, admitted.close or CloseCode.BAD_JOIN))
            # Client-chosen names in repr(): control characters cannot forge log lines.
            log.info(
                "refused a join of room %r from %r: %s",
                request.room,
                conn.address,
                admitted.error.message,
            )
            return
        join = admitted.join
        ice_servers = self.ice_servers_for(join.peer_id, now, admitted.admitted_until)
        outcome = await self.registry.join(admitted.room, join, conn, ice_servers)
        if isinstance(outcome, Refused):
            _reply(conn, session.refused(Error(outcome.code, outcome.message), outcome.close_code))
            log.info("refused %r in room %r: %s", join.peer_id, request.room, outcome.code)
            return
        session.joined(join.peer_id, request.room)
        self._refresh_ice_later(conn, now, admitted.admitted_until)
        self.metrics.joins_total += 1
        log.info(
            "%r joined room %r (%d peers)%s",
            join.peer_id,
            request.room,
            len(outcome.peers) + 1,
            " resuming" if outcome.replaced is not None else "",
        )

    def _refresh_ice_later(self, conn: Connection, minted: float, until: float | None) -> None:
        """At half their lifetime, send the peer fresh TURN credentials (``ice-servers``):
        connections it makes later (someone joins in hour two) need valid ones. Not once
        they last as long as its access token (``until``): it gets none beyond that."""
        turn = self.config.turn
        delay = turn.refresh_after(minted, until) if turn is not None else None
        if delay is not None:
            loop = asyncio.get_running_loop()
            conn.ice_refresh = loop.call_later(delay, self._refresh_ice, conn, until)

    def _refresh_ice(self, conn: Connection, until: float | None) -> None:
        peer = conn.peer_id
        if peer is None or self.shutting_down:
            return  # left
        now = time.time()
        conn.push(serialize(IceServers(self.ice_servers_for(peer, now, until))))
        self._refresh_ice_later(conn, now, until)

    async def _leave(self, conn: Connection, reason: LeaveReason) -> None:
        """End ``conn``'s membership once (its handler and shutdown may both ask)."""
        if conn in self._handing_over:
            return
        membership = conn.session.leave()
        if membership is None:
            return
        peer, room = membership
        await self.registry.leave(room, peer, conn)
        self.metrics.leaves[reason] += 1
        log.info("%r left room %r (%s)", peer, room, reason)

    async def shutdown(self, app: web.Application | None = None) -> None:
        """Close every client with 1001. Alone, tell the others ``peer-left`` as each one
        goes. Sharing rooms with other nodes, hand the members over instead: their
        memberships hold while they rejoin (through the load balancer, on another node)
        with their resume token, so the others see a resume and keep their media; those
        that do not come back within ``config.handover`` seconds leave then."""
        self.shutting_down = True
        conns = list(self.connections)
        hand_over = self.registry.cluster_stats() is not None
        for conn in conns:
            if hand_over:
                self._handing_over.add(conn)
            else:
                await self._leave(conn, LeaveReason.SHUTDOWN)
            conn.end(CloseCode.GOING_AWAY, LeaveReason.SHUTDOWN)
        if conns:
            await asyncio.wait([c.writer for c in conns], timeout=self.limits.probe_timeout)
        if hand_over:
            await self._hand_over(conns)

    async def _hand_over(self, conns: list[Connection]) -> None:
        members = [c for c in conns if c.peer_id is not None]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.handover
        while members and loop.time() < deadline:
            for conn in [c for c in members if c.replaced or c.probed_after_close]:
                members.remove(conn)
                self._handing_over.discard(conn)
                # Resumed elsewhere: nothing to end. Its ID wanted without a token (a client
                # that cannot resume): it leaves now, so that join succeeds on a retry.
                await self._leave(conn, LeaveReason.SHUTDOWN)
            await asyncio.sleep(0.05)
        self._handing_over.clear()
        if members:
            log.info("%d member(s) did not resume on another node: they leave", len(members))
        # At once, not one round trip to Redis after another.
        await asyncio.gather(*(self._leave(conn, LeaveReason.SHUTDOWN) for conn in members))


def _reply(conn: Connection, reply: Reply) -> None:
    """Carry out a session's ``Reply``: the error, then the close if it asks for one."""
    conn.send_error(reply.error)
    if reply.close is not None:
        conn.end(reply.close, LeaveReason.CLOSED)
