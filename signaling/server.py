"""The aiohttp adapter: WebSocket frames in, session decisions out, bounded queues to each client.

Everything the protocol decides lives in :mod:`signaling.session`, :mod:`signaling.rooms`
and :mod:`signaling.registry`; this module only moves frames and keeps time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import WSMsgType, web

from signaling.ice import IceServer
from signaling.metrics import LeaveReason, Metrics
from signaling.protocol import CloseCode, Error, ErrorCode, PeerId, RoomId, serialize
from signaling.registry import LocalRegistry, Registry
from signaling.rooms import Refused
from signaling.session import Forward, JoinRequest, Limits, Phase, Reply, Session

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


@dataclass(frozen=True)
class ServerConfig:
    limits: Limits = field(default_factory=Limits)
    #: ICE servers handed to browser pages (``/config.json``); none by default.
    ice_servers: Sequence[IceServer] = ()


class Connection:
    """One client: frames go straight to its transport while it keeps up, else to a queue.

    Pushing never blocks. While the transport's buffer is under its high-water mark a frame
    is written at once (no task switch per message; uvloop sends a loop iteration's writes
    in one syscall). A client that stops reading fills its transport, then its bounded queue;
    a full queue drops the client, so it costs nobody else anything. The writer task empties
    the queue as the transport drains, and closes the socket after the queued frames.
    """

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, limits: Limits, metrics: Metrics
    ) -> None:
        self.ws = ws
        self.request = request
        self.limits = limits
        self.metrics = metrics
        self.peer_id: PeerId | None = None
        self.room: RoomId | None = None
        self.reason: LeaveReason | None = None  # set when the server ends the connection
        self._queue: deque[str] = deque()
        self._transport = request.transport
        self._high_water = (
            self._transport.get_write_buffer_limits()[1] if self._transport is not None else 0
        )
        #: Set while the writer task idles: only then may push() write past the queue.
        self._wakeup: asyncio.Future[None] | None = None
        self._close_code: CloseCode | None = None
        self._last_heard = time.monotonic()
        self._probe: asyncio.TimerHandle | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self.writer = asyncio.get_running_loop().create_task(self._write_loop())

    # -- Outbox ---------------------------------------------------------------
    def push(self, data: str) -> None:
        if self._close_code is not None:
            return
        transport = self._transport
        if (
            not self._queue
            and self._wakeup is not None
            and transport is not None
            and transport.get_write_buffer_size() <= self._high_water
            and not transport.is_closing()
            and not self.ws.closed
        ):
            transport.write(text_frame(data))
            return
        if len(self._queue) >= self.limits.send_queue:
            self.metrics.slow_clients_dropped_total += 1
            log.warning(
                "dropping slow client %s: %d messages queued", self.peer_id, len(self._queue)
            )
            self._queue.clear()
            self.end(CloseCode.SLOW_CONSUMER, LeaveReason.SLOW, abort=True)
            return
        self._queue.append(data)
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def probe(self) -> None:
        if self._probe is not None or self._close_code is not None:
            return
        sent_at = time.monotonic()
        loop = asyncio.get_running_loop()
        self._ping_task = loop.create_task(self._ping())
        self._probe = loop.call_later(self.limits.probe_timeout, self._probe_expired, sent_at)

    def replace(self) -> None:
        self.end(CloseCode.REPLACED, LeaveReason.REPLACED)

    # -- lifecycle --------------------------------------------------------------
    def heard(self) -> None:
        self._last_heard = time.monotonic()

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
        with contextlib.suppress(Exception):
            await self.ws.ping()

    def _probe_expired(self, sent_at: float) -> None:
        self._probe = None
        if self._last_heard < sent_at:
            log.info("peer %s did not answer a liveness probe: dropping it", self.peer_id)
            self.end(CloseCode.GOING_AWAY, LeaveReason.UNRESPONSIVE, abort=True)

    def _write_queued(self) -> bool:
        """Move queued frames into the transport while it takes them; True once all are out."""
        queue, transport = self._queue, self._transport
        if transport is None or transport.is_closing() or self.ws.closed:
            queue.clear()  # the socket is going; the reader notices
            return True
        while queue:
            if transport.get_write_buffer_size() > self._high_water:
                return False
            transport.write(text_frame(queue.popleft()))
        return True

    async def _write_loop(self) -> None:
        ws = self.ws
        loop = asyncio.get_running_loop()
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
        if not ws.closed:
            try:
                await asyncio.wait_for(ws.close(code=self._close_code), self.limits.probe_timeout)
            except (TimeoutError, ConnectionError, RuntimeError):
                self._abort()

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if not self.writer.done():
            self.end(CloseCode.NORMAL, self.reason or LeaveReason.CLOSED)
            try:
                await asyncio.wait_for(asyncio.shield(self.writer), self.limits.probe_timeout)
            except TimeoutError:
                self.writer.cancel()


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
        self.started = time.monotonic()
        self.shutting_down = False

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
        return web.json_response({"iceServers": [s.to_json() for s in self.config.ice_servers]})

    async def handle_index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    # -- WebSocket --------------------------------------------------------------
    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        limits = self.limits
        ws = web.WebSocketResponse(
            autoping=False,
            heartbeat=limits.heartbeat,
            max_msg_size=limits.max_frame_bytes * HARD_LIMIT_FACTOR,
        )
        await ws.prepare(request)
        if self.shutting_down:
            await ws.close(code=CloseCode.GOING_AWAY)
            return ws
        loop = asyncio.get_running_loop()
        room_param = request.query.get("room") or None
        session = Session(limits, loop.time(), RoomId(room_param) if room_param else None)
        conn = Connection(ws, request, limits, self.metrics)
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
            if conn.peer_id is not None and conn.room is not None:
                await self.registry.leave(conn.room, conn.peer_id, conn)
                final = conn.reason or reason
                self.metrics.leaves[final] += 1
                log.info("%s left room %s (%s)", conn.peer_id, conn.room, final)
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
        loop = asyncio.get_running_loop()
        registry = self.registry
        routed = self.metrics.routed
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT:
                conn.heard()
                decision = session.receive(msg.data, loop.time())
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
                    routed[decision.type] += 1
                elif isinstance(decision, JoinRequest):
                    await self._join(conn, session, decision)
                elif isinstance(decision, Reply):
                    conn.send_error(decision.error)
                    if decision.close is not None:
                        conn.end(decision.close, LeaveReason.CLOSED)
            elif kind is WSMsgType.PING:
                conn.heard()
                await ws.pong(msg.data)
            elif kind is WSMsgType.PONG:
                conn.heard()
            elif kind is WSMsgType.BINARY:
                conn.heard()
                conn.send_error(session.receive_binary().error)
            elif kind is WSMsgType.CLOSE:
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
        join = request.join
        outcome = await self.registry.join(request.room, join, conn)
        if isinstance(outcome, Refused):
            session.closed()  # a join sent right behind this one must not get in
            conn.send_error(Error(outcome.code, outcome.message))
            conn.end(outcome.close_code, LeaveReason.CLOSED)
            log.info("refused %s in room %s: %s", join.peer_id, request.room, outcome.code)
            return
        session.joined(join.peer_id, request.room)
        conn.peer_id, conn.room = join.peer_id, request.room
        self.metrics.joins_total += 1
        log.info(
            "%s joined room %s (%d peers)%s",
            join.peer_id,
            request.room,
            len(outcome.peers) + 1,
            " resuming" if outcome.replaced is not None else "",
        )

    async def shutdown(self, app: web.Application | None = None) -> None:
        """Close every client with 1001, telling the others ``peer-left`` as each one goes."""
        self.shutting_down = True
        conns = list(self.connections)
        for conn in conns:
            if conn.peer_id is not None and conn.room is not None:
                await self.registry.leave(conn.room, conn.peer_id, conn)
                self.metrics.leaves[LeaveReason.SHUTDOWN] += 1
                log.info("%s left room %s (%s)", conn.peer_id, conn.room, LeaveReason.SHUTDOWN)
                conn.peer_id = None  # its handler must not leave a second time
            conn.end(CloseCode.GOING_AWAY, LeaveReason.SHUTDOWN)
        if conns:
            await asyncio.wait([c.writer for c in conns], timeout=self.limits.probe_timeout)
