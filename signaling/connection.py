"""One client connection of the server: its bounded outbox, and the frames it writes itself.

The relay's hot path writes WebSocket frames straight to the transport, beside aiohttp's
own writer, which only sends pongs and closes here. That leans on aiohttp details
(``request.transport`` is the socket's transport, ``ws.prepare`` hands back the stream
writer, nothing is buffered between them): ``tests/signaling/test_connection.py`` pins
each of them, so an aiohttp upgrade that changes one fails loudly there.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from time import perf_counter

from aiohttp import web

from signaling.metrics import Metrics
from signaling.protocol import CloseCode, Error, PeerId, RoomId, serialize
from signaling.reasons import LeaveReason
from signaling.session import Session

log = logging.getLogger(__name__)

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
        session: Session,
        metrics: Metrics,
        address: str = "",
        flusher: Flusher | None = None,
    ) -> None:
        self.ws = ws
        self.request = request
        #: The conversation's state: phase, who joined and where.
        self.session = session
        self.limits = limits = session.limits
        self.metrics = metrics
        self.address = address  # the client's, as the per-address caps count it
        self.reason: LeaveReason | None = None  # set when the server ends the connection
        #: Its membership was taken over by a resume (here or on another node).
        self.replaced = False
        #: Someone asked for its ID after it closed (while its node hands members over).
        self.probed_after_close = False
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

    @property
    def peer_id(self) -> PeerId | None:
        """Who this client joined as, until its membership ends (kept by its session)."""
        return self.session.peer_id

    @property
    def room(self) -> RoomId | None:
        return self.session.room

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
        if self._close_code is not None:
            self.probed_after_close = True  # a node handing over: its membership goes now
            return
        if self._probe is not None:
            return
        self._ping_task = self._loop.create_task(self._ping())
        self._probe = self._loop.call_later(
            self.limits.probe_timeout, self._probe_expired, self.frames_heard
        )

    def replace(self) -> None:
        self.replaced = True
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
