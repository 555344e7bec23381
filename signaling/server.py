"""The aiohttp adapter: WebSocket frames in, session decisions out, bounded queues to each client.

Everything the protocol decides lives in :mod:`signaling.session`, :mod:`signaling.rooms`
and :mod:`signaling.registry`; this module only moves frames and keeps time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

from aiohttp import WSMsgType, web

from signaling.admission import IpGate, OriginPolicy, client_address
from signaling.auth import TokenRefused, TokenVerifier, authorize
from signaling.ice import IceServer
from signaling.metrics import MAX_TYPE_LABELS, OTHER_TYPE_LABEL, LeaveReason, Metrics, Refusal
from signaling.protocol import (
    CloseCode,
    Error,
    ErrorCode,
    IceServers,
    PeerId,
    RoomId,
    serialize,
)
from signaling.registry import LocalRegistry, Registry
from signaling.rooms import Refused
from signaling.session import Forward, JoinRequest, Limits, Phase, Reply, Session
from signaling.turn import TurnMinter

#: Client-chosen strings (peer IDs, rooms, forwarded addresses) are logged with %r: quoted
#: and escaped, so no name can forge a log line (names with control characters are refused
#: anyway, signaling.protocol.check_name).
log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

#: Frames above max_frame_bytes get an error and the connection lives on; frames above this
#: multiple of it are refused by the transport (close 1009) so memory stays bounded.
HARD_LIMIT_FACTOR = 4

_FIN_TEXT = 0x81  # a final text frame: FIN bit and opcode 1 (RFC 6455, section 5.2)
_LENGTH_16 = struct.Struct("!BBH").pack
_LENGTH_64 = struct.Struct("!BBQ").pack


def text_frame(text: str) -> bytes:
    """``text`` as one WebSocket text frame, as a server sends it: unmasked, uncompressed.

    Relaying needs nothing more than a header in front of the payload, so the hot path
    writes frames itself instead of going through a coroutine per message. Uncompressed
    frames stay valid where permessage-deflate was negotiated (RFC 7692, section 6).
    """
    # A str from json.dumps may hold a lone surrogate (an escaped "\ud800" in a client's
    # input): it goes out as "?" rather than failing the delivery.
    payload = text.encode("utf-8", "replace")
    size = len(payload)
    if size < 126:
        return bytes((_FIN_TEXT, size)) + payload
    if size < 65536:
        return _LENGTH_16(_FIN_TEXT, 126, size) + payload
    return _LENGTH_64(_FIN_TEXT, 127, size) + payload


def close_frame(code: int) -> bytes:
    """A server's close frame carrying ``code`` and no reason (RFC 6455, section 5.5.1)."""
    return bytes((0x88, 2)) + code.to_bytes(2, "big")


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
    limits: Limits = field(default_factory=Limits)
    #: ICE servers handed to every peer (``peer-list``, ``/config.json``); none by default.
    ice_servers: Sequence[IceServer] = ()
    #: When set, every join needs an HS256 access token signed with it (signaling.auth).
    auth_secret: bytes | None = None
    #: Browser origins allowed to open a WebSocket (besides the server's own page); empty: any.
    allowed_origins: Sequence[str] = ()
    #: Count clients by the last X-Forwarded-For hop (behind a reverse proxy you run).
    trust_proxy: bool = False
    #: TURN URLs with per-peer credentials minted from a secret shared with the TURN server.
    turn: TurnMinter | None = None


#: Each event-loop pass writes fan-out frames (room notices, broadcasts) after every direct
#: frame, to one connection at least, for at least this long (about 3 writes on loopback) ...
FANOUT_MIN_SECONDS = 25e-6
#: ... or for this share of the time the loop spent on everything else since the last pass
#: wrote fan-outs, if longer: a backlog of fan-outs gets a third of a busy loop, at least.
FANOUT_SHARE = 0.5


class Flusher:
    """Writes every connection's queued frames from one callback per event-loop pass.

    A connection with a direct frame (``push``: a relayed message, a ``peer-list``, an error)
    is written in the next pass, all of them, in the order they were first pushed to. Then the
    connections with fan-out frames (``push_fanout``), in the order they got them, for a time
    budget; the rest wait for the following passes. Each connection's frames always go out in
    the order they were queued, whichever list wrote them.

    A room of thousands gets its ``peer-joined`` over several passes, then, with the loop's
    other work (the next handshake, relayed messages) in between; and a member told of several
    joins before its turn comes gets them in one write. One write (a syscall, ~9 µs on
    loopback) per member per join made a join storm cost O(members) syscalls per join.
    """

    __slots__ = ("_direct", "_fanout", "_frame", "_idle_since", "_loop", "_scheduled", "_text")

    def __init__(self) -> None:
        self._direct: list[Connection] = []
        self._fanout: deque[Connection] = deque()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: When the last pass stopped writing fan-outs: the loop's other work since is the
        #: measure of how long this one may.
        self._idle_since = 0.0
        #: The text last framed for a fan-out, and its frame: one encoding for the whole room.
        self._text: str | None = None
        self._frame = b""

    def frame(self, text: str) -> bytes:
        """``text_frame(text)``, encoded once for a fan-out's many pushes of one str."""
        if text is not self._text:
            self._frame = text_frame(text)
            self._text = text
        return self._frame

    def direct(self, conn: Connection) -> None:
        self._direct.append(conn)
        if not self._scheduled:
            self._schedule(conn._loop)

    def fanout(self, conn: Connection) -> None:
        if not self._fanout:
            self._idle_since = perf_counter()
        self._fanout.append(conn)
        if not self._scheduled:
            self._schedule(conn._loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = True
        self._loop = loop
        loop.call_soon(self._run)

    def _run(self) -> None:
        direct = self._direct
        if direct:
            self._direct = []
            for conn in direct:
                conn._direct = False
                conn._flush()
        fanout = self._fanout
        if fanout:
            now = perf_counter()
            until = now + max(FANOUT_MIN_SECONDS, FANOUT_SHARE * (now - self._idle_since))
            while fanout:
                conn = fanout.popleft()
                conn._in_fanout = False
                conn._flush()
                now = perf_counter()
                if now >= until:
                    break
            self._idle_since = now
        # Writing queues nothing new: what is left is fan-outs beyond this pass's budget.
        if (fanout or self._direct) and self._loop is not None:
            self._loop.call_soon(self._run)
        else:
            self._scheduled = False


class Connection:
    """One client: a bounded queue, written to its transport once per loop iteration.

    Pushing never blocks. What one loop iteration queues goes out in a single write (one
    syscall, however many peers sent to this client), from a callback rather than a task
    switch per message. A client that stops reading fills its transport, then its bounded
    queue; a full queue drops the client, so it costs nobody else anything. The writer task
    empties the queue as the transport drains, and closes the socket after the queued frames.
    Fan-out frames (the same text for a whole room) may wait a few loop passes for their
    write, behind direct ones (:class:`Flusher`), never out of order with them.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        limits: Limits,
        metrics: Metrics,
        address: str = "",
        flusher: Flusher | None = None,
    ) -> None:
        self.ws = ws
        self.request = request
        self.limits = limits
        self.metrics = metrics
        self.peer_id: PeerId | None = None
        self.room: RoomId | None = None
        self.address = address  # the client's, as the per-address caps count it
        self.reason: LeaveReason | None = None  # set when the server ends the connection
        #: Frames, ready to write: a fan-out's frame is encoded once for the whole room.
        self._queue: deque[bytes] = deque()
        self._send_queue = limits.send_queue
        #: Fan-out frames waiting this many deep get written in the next pass, like direct
        #: ones: waiting for its turn must never bring a reading client near send_queue.
        self._fanout_limit = max(1, limits.send_queue // 4)
        self._flusher = flusher if flusher is not None else Flusher()
        self._transport = request.transport
        self._high_water = (
            self._transport.get_write_buffer_limits()[1] if self._transport is not None else 0
        )
        #: Set while the writer task idles: only then does a flush callback write the queue.
        self._wakeup: asyncio.Future[None] | None = None
        #: On the flusher's direct list; on its fan-out list (possibly written since).
        self._direct = False
        self._in_fanout = False
        self._loop = asyncio.get_running_loop()
        self._close_code: CloseCode | None = None
        #: Frames received so far: a probe answered is one that saw this grow. A counter, not a
        #: timestamp, because it is bumped for every frame and a clock read costs more.
        self.frames_heard = 0
        self._probe: asyncio.TimerHandle | None = None
        #: Our close frame is out; the reader ends the connection on the client's reply.
        self.close_sent = False
        self._close_timer: asyncio.TimerHandle | None = None
        #: Sends fresh TURN credentials before those this peer holds expire.
        self.ice_refresh: asyncio.TimerHandle | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self.writer = self._loop.create_task(self._write_loop())

    # -- Outbox ---------------------------------------------------------------
    def push(self, data: str) -> None:
        if self._close_code is not None:
            return
        queue = self._queue
        if len(queue) >= self._send_queue and not self._make_room():
            return
        queue.append(text_frame(data))
        if not self._direct and self._wakeup is not None:
            self._direct = True
            self._flusher.direct(self)
        # Otherwise the writer task is busy (starting, draining, closing): it writes the queue.

    def push_fanout(self, data: str) -> None:
        # Called once per member for every notice and broadcast: kept to a few attribute reads.
        if self._close_code is not None:
            return
        queue, flusher = self._queue, self._flusher
        waiting = len(queue)
        if waiting >= self._send_queue:
            if not self._make_room():
                return
            waiting = 0
        queue.append(flusher._frame if data is flusher._text else flusher.frame(data))
        if self._direct or self._wakeup is None:
            return  # written in the next pass anyway, or by the busy writer task
        if waiting >= self._fanout_limit:
            self._direct = True
            flusher.direct(self)
        elif not self._in_fanout:
            self._in_fanout = True
            flusher.fanout(self)

    def _make_room(self) -> bool:
        """The queue is full: write it now if the client's socket takes it (a burst, in one
        loop pass, to a client that reads), else drop the client as too slow."""
        waiter = self._wakeup
        if waiter is not None and not waiter.done() and self._write_queued():
            return True
        self.metrics.slow_clients_dropped_total += 1
        log.warning("dropping slow client %r: %d messages queued", self.peer_id, len(self._queue))
        self._queue.clear()
        self.end(CloseCode.SLOW_CONSUMER, LeaveReason.SLOW, abort=True)
        return False

    def _flush(self) -> None:
        """Write what is queued; a full transport hands over to the writer task."""
        waiter = self._wakeup
        if waiter is None or waiter.done():
            return  # the writer task is running: it writes the queue itself
        if not self._write_queued():
            waiter.set_result(None)  # the writer task waits for the transport to drain

    def probe(self) -> None:
        if self._probe is not None or self._close_code is not None:
            return
        self._ping_task = self._loop.create_task(self._ping())
        self._probe = self._loop.call_later(
            self.limits.probe_timeout, self._probe_expired, self.frames_heard
        )

    def replace(self) -> None:
        self.end(CloseCode.REPLACED, LeaveReason.REPLACED)

    # -- lifecycle --------------------------------------------------------------
    def send_error(self, error: Error) -> None:
        self.metrics.errors[error.code] += 1
        self.push(serialize(error))

    def end(self, code: CloseCode, reason: LeaveReason, *, abort: bool = False) -> None:
        """Close after the queued frames are sent (or at once with ``abort``)."""
        if self._close_code is not None:
            return
        self._close_code = code
        self.reason = reason
        if abort:
            self._abort()
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def _ping(self) -> None:
        try:
            await self.ws.ping()
        except Exception as exc:  # a dying socket: the probe's deadline decides, not this
            log.debug("ping to %r failed: %r", self.peer_id, exc)

    def _probe_expired(self, heard_before: int) -> None:
        self._probe = None
        if self.frames_heard == heard_before:
            log.info("peer %r did not answer a liveness probe: dropping it", self.peer_id)
            self.end(CloseCode.GOING_AWAY, LeaveReason.UNRESPONSIVE, abort=True)

    def _write_queued(self) -> bool:
        """Queued frames into the transport in one write; False while the transport is full."""
        queue, transport = self._queue, self._transport
        if transport is None or transport.is_closing() or self.ws.closed:
            queue.clear()  # the socket is going; the reader notices
            return True
        if not queue:
            return True
        if transport.get_write_buffer_size() > self._high_water:
            return False
        transport.write(queue[0] if len(queue) == 1 else b"".join(queue))
        queue.clear()
        return True

    async def _write_loop(self) -> None:
        ws, loop = self.ws, self._loop
        try:
            stream = await ws.prepare(self.request)  # prepared already: returns its writer
            while True:
                if not self._write_queued():
                    await stream.drain()  # returns once the transport is below its low-water mark
                    continue
                if self._close_code is not None:
                    break
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
        except (ConnectionError, RuntimeError):
            return  # the socket is gone; the reader notices too
        transport = self._transport
        if ws.closed or transport is None or transport.is_closing():
            return
        # The close frame goes out like the text frames, and the reader finishes the handshake
        # when the client answers. (ws.close() with the reader waiting would drop TCP at once,
        # and aiohttp clients then report 1006 instead of this code.) No answer: cut off.
        transport.write(close_frame(self._close_code or CloseCode.NORMAL))
        self.close_sent = True
        self._close_timer = loop.call_later(self.limits.probe_timeout, self._abort)

    def handshake_done(self) -> None:
        """The client answered our close frame: nothing more to say on this socket."""
        if self._transport is not None:
            self._transport.close()

    async def stop(self) -> None:
        if self.ice_refresh is not None:
            self.ice_refresh.cancel()
        if self._probe is not None:
            self._probe.cancel()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.writer.done():
            self.end(CloseCode.NORMAL, self.reason or LeaveReason.CLOSED)
            try:
                await asyncio.wait_for(asyncio.shield(self.writer), self.limits.probe_timeout)
            except TimeoutError:
                self.writer.cancel()


def _bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def _revalidate_page(request: web.Request, response: web.StreamResponse) -> None:
    """The page's modules must come from one version: browsers revalidate them (cheap 304s)
    instead of mixing cached old modules with new ones after an upgrade."""
    if request.path == "/" or request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"


class SignalingServer:
    """Owns the registry, the metrics and the open connections of one server process."""

    def __init__(self, config: ServerConfig | None = None, registry: Registry | None = None):
        self.config = config or ServerConfig()
        self.limits = self.config.limits
        self.registry: Registry = registry or LocalRegistry(self.limits.max_peers)
        self.metrics = Metrics()
        self.connections: set[Connection] = set()
        #: Writes every connection's queued frames, once per event-loop pass.
        self.flusher = Flusher()
        self.started = time.monotonic()
        self.shutting_down = False
        secret = self.config.auth_secret
        self.verifier = TokenVerifier(secret) if secret is not None else None
        self.origins = OriginPolicy.of(self.config.allowed_origins)
        self.ip_gate = IpGate(self.limits.ip_connections, self.limits.ip_connects_per_minute)

    def ice_servers_for(self, peer: PeerId) -> tuple[IceServer, ...]:
        """What a peer is handed: the static servers, then TURN with credentials for it."""
        static = tuple(self.config.ice_servers)
        turn = self.config.turn
        return static + turn.servers_for(peer, time.time()) if turn is not None else static

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.handle_ws)
        app.router.add_get("/healthz", self.handle_health)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/config.json", self.handle_config)
        if (STATIC_DIR / "index.html").exists():
            app.router.add_get("/", self.handle_index)
            app.router.add_static("/static/", STATIC_DIR)
            app.on_response_prepare.append(_revalidate_page)
        app.on_shutdown.append(self.shutdown)
        app.cleanup_ctx.append(_relay_gc_threshold)
        return app

    # -- HTTP -------------------------------------------------------------------
    async def handle_health(self, request: web.Request) -> web.Response:
        rooms, peers = self.registry.counts()
        return web.json_response(
            {
                "status": "stopping" if self.shutting_down else "ok",
                "rooms": rooms,
                "peers": peers,
                "connections": len(self.connections),
                "uptime": round(time.monotonic() - self.started, 3),
            }
        )

    async def handle_metrics(self, request: web.Request) -> web.Response:
        rooms, peers = self.registry.counts()
        self.metrics.connections_open = len(self.connections)
        text = self.metrics.render(rooms, peers, time.monotonic() - self.started)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def handle_config(self, request: web.Request) -> web.Response:
        """The page's ICE servers; with auth on, only for a valid token (TURN is minted for it)."""
        peer = PeerId("page")
        if self.verifier is not None:
            token = request.query.get("token") or _bearer(request.headers.get("Authorization"))
            try:
                peer = self.verifier.verify(token, time.time()).peer_id
            except TokenRefused as exc:
                return web.json_response(
                    {"error": exc.code.value, "message": str(exc)},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        servers = self.ice_servers_for(peer)
        return web.json_response(
            {"iceServers": [s.to_json() for s in servers]}, headers={"Cache-Control": "no-store"}
        )

    async def handle_index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    # -- WebSocket --------------------------------------------------------------
    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        address = client_address(
            request.remote, headers.get("X-Forwarded-For"), self.config.trust_proxy
        )
        origin = headers.get("Origin")
        if not self.origins.admits(origin, request.host):
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
        conn = Connection(ws, request, limits, self.metrics, address, self.flusher)
        self.connections.add(conn)
        self.metrics.connections_total += 1
        join_timer = loop.call_later(limits.join_timeout, self._join_timed_out, conn, session)
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

    def _join_timed_out(self, conn: Connection, session: Session) -> None:
        if session.phase is Phase.AWAITING_JOIN:
            session.closed()
            conn.send_error(
                Error(ErrorCode.JOIN_TIMEOUT, f"no 'join' within {self.limits.join_timeout:g} s")
            )
            conn.end(CloseCode.JOIN_TIMEOUT, LeaveReason.CLOSED)

    async def _read_loop(
        self, ws: web.WebSocketResponse, conn: Connection, session: Session
    ) -> LeaveReason:
        clock = asyncio.get_running_loop().time
        registry = self.registry
        routed = self.metrics.routed
        text_frames = WSMsgType.TEXT  # an enum member lookup costs ~0.1 us on Python 3.11
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is text_frames:
                conn.frames_heard += 1
                decision = session.receive(msg.data, clock())
                if type(decision) is Forward:
                    room, sender, to = conn.room, conn.peer_id, decision.to
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
                    conn.send_error(decision.error)
                    if decision.close is not None:
                        conn.end(decision.close, LeaveReason.CLOSED)
            elif kind is WSMsgType.PING:
                conn.frames_heard += 1
                await ws.pong(msg.data)
            elif kind is WSMsgType.PONG:
                conn.frames_heard += 1
            elif kind is WSMsgType.BINARY:
                conn.frames_heard += 1
                refused = session.receive_binary(clock())
                if isinstance(refused, Reply):
                    conn.send_error(refused.error)
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
        admitted = authorize(request, self.verifier, time.time())
        if isinstance(admitted, Reply):
            session.closed()
            conn.send_error(admitted.error)
            conn.end(admitted.close or CloseCode.BAD_JOIN, LeaveReason.CLOSED)
            # Client-chosen names in repr(): control characters cannot forge log lines.
            log.info(
                "refused a join of room %r from %r: %s",
                request.room,
                conn.address,
                admitted.error.message,
            )
            return
        join = admitted.join
        ice_servers = self.ice_servers_for(join.peer_id)
        outcome = await self.registry.join(admitted.room, join, conn, ice_servers)
        if isinstance(outcome, Refused):
            session.closed()  # a join sent right behind this one must not get in
            conn.send_error(Error(outcome.code, outcome.message))
            conn.end(outcome.close_code, LeaveReason.CLOSED)
            log.info("refused %r in room %r: %s", join.peer_id, request.room, outcome.code)
            return
        session.joined(join.peer_id, request.room)
        conn.peer_id, conn.room = join.peer_id, request.room
        self._refresh_ice_later(conn)
        self.metrics.joins_total += 1
        log.info(
            "%r joined room %r (%d peers)%s",
            join.peer_id,
            request.room,
            len(outcome.peers) + 1,
            " resuming" if outcome.replaced is not None else "",
        )

    def _refresh_ice_later(self, conn: Connection) -> None:
        """At half their lifetime, send the peer fresh TURN credentials (``ice-servers``):
        connections it makes later (someone joins in hour two) need valid ones."""
        turn = self.config.turn
        if turn is not None:
            loop = asyncio.get_running_loop()
            conn.ice_refresh = loop.call_later(turn.ttl / 2, self._refresh_ice, conn)

    def _refresh_ice(self, conn: Connection) -> None:
        peer = conn.peer_id
        if peer is None or self.shutting_down:
            return  # left
        conn.push(serialize(IceServers(self.ice_servers_for(peer))))
        self._refresh_ice_later(conn)

    async def _leave(self, conn: Connection, reason: LeaveReason) -> None:
        """End ``conn``'s membership once (its handler and shutdown may both ask)."""
        peer, room = conn.peer_id, conn.room
        if peer is None or room is None:
            return
        conn.peer_id = None
        await self.registry.leave(room, peer, conn)
        self.metrics.leaves[reason] += 1
        log.info("%r left room %r (%s)", peer, room, reason)

    async def shutdown(self, app: web.Application | None = None) -> None:
        """Close every client with 1001, telling the others ``peer-left`` as each one goes."""
        self.shutting_down = True
        conns = list(self.connections)
        for conn in conns:
            await self._leave(conn, LeaveReason.SHUTDOWN)
            conn.end(CloseCode.GOING_AWAY, LeaveReason.SHUTDOWN)
        if conns:
            await asyncio.wait([c.writer for c in conns], timeout=self.limits.probe_timeout)
