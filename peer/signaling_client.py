"""The room signaling client: one WebSocket to the server, joined to one room, kept alive.

Speaks the protocol through :mod:`signaling.protocol` (the same parse/serialize as the
server). Works against the reference Go server too: it omits ``peers`` in an empty room,
never sends ``error`` or a resume token, and ignores the ``room`` field.

After the first join succeeds, a lost connection is retried with capped exponential
backoff (:func:`peer.mesh.reconnect_delay`) and the room joined again with the resume
token the server handed out, so the ID is taken back at once. The owner is told through
three callbacks: every message, every (re)join, every loss.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp

import peer.mesh as mesh
from peer.errors import MeshpeerError
from signaling.protocol import (
    Error,
    Join,
    Message,
    PeerId,
    PeerList,
    ProtocolError,
    RoomId,
    parse,
    serialize,
)

log = logging.getLogger(__name__)


class SignalingError(MeshpeerError):
    """The signaling server could not be reached or closed the connection."""


class JoinRefused(MeshpeerError):
    """The server refused the join (``id-taken``, ``room-full``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(
            f"join refused ({code}): {message}" if message else f"join refused ({code})"
        )
        self.code = code


def websocket_url(url: str) -> str:
    """Accept ``ws://host:port[/ws]`` or ``http://host:port``; default path ``/ws``."""
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise SignalingError(f"not a signaling URL: {url!r} (expected ws://host:port/ws)")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


#: Seconds between join attempts refused with ``id-taken`` (the server probes the holder).
JOIN_RETRY_DELAY = 0.5

MessageHandler = Callable[[Message], None]
JoinedHandler = Callable[[PeerList, bool], None]
LostHandler = Callable[[int | None], None]


class SignalingClient:
    """Joins ``room`` as ``peer_id`` and stays joined until :meth:`close`.

    ``on_joined(peer_list, rejoin)`` runs for the first join and every rejoin, before any
    other message of that connection; ``on_message`` for every later message;
    ``on_lost(close_code)`` when a joined connection ends (None: no close code, the socket
    just dropped). All three run on the event loop and must not block.
    """

    def __init__(
        self,
        url: str,
        peer_id: PeerId,
        room: RoomId | None = None,
        *,
        on_message: MessageHandler,
        on_joined: JoinedHandler,
        on_lost: LostHandler,
        connect_timeout: float = 5.0,
        heartbeat: float = 10.0,
        token: str | None = None,
    ) -> None:
        self.url = websocket_url(url)
        self.peer_id = peer_id
        self.room = room
        #: The access token, sent with every join (rejoins need it as much as the first).
        self.token = token
        self.resume_token: str | None = None
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self._on_message = on_message
        self._on_joined = on_joined
        self._on_lost = on_lost
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: Set when a rejoin failed for good; the agent reports it.
        self.fatal: MeshpeerError | None = None
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def connect(self) -> None:
        """First join. Raises :class:`SignalingError` or :class:`JoinRefused` on failure.

        ``id-taken`` is retried for a few seconds: the server probes the old holder (maybe
        our own previous, dead connection) and frees the ID within its probe timeout.
        """
        self._session = aiohttp.ClientSession()
        refusals = 0
        while True:
            try:
                ws, peer_list = await self._connect_and_join()
            except JoinRefused as exc:
                refusals += 1
                if mesh.on_join_refused(exc.code, refusals, rejoin=False) is mesh.JoinRetry.FAIL:
                    await self._close_session()
                    raise
                log.info("%s; retrying", exc)
                await asyncio.sleep(mesh.reconnect_delay(0, random.random(), base=JOIN_RETRY_DELAY))
                continue
            except BaseException:
                await self._close_session()
                raise
            break
        self._joined(ws, peer_list, rejoin=False)
        self._task = asyncio.get_running_loop().create_task(self._run(ws), name="signaling")
        self._task.add_done_callback(self._ended)

    async def send(self, message: Message) -> bool:
        """Send one message; False (and dropped) while disconnected."""
        ws = self._ws
        if ws is None or ws.closed:
            log.debug("signaling down: dropping %s", type(message).__name__)
            return False
        try:
            await ws.send_str(serialize(message))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            log.debug("send failed: %s", exc)
            return False
        return True

    async def drop_connection(self) -> None:
        """Close the socket as if the network failed; the client reconnects (for tests)."""
        ws = self._ws
        if ws is not None:
            await ws.close(code=4000)

    async def close(self) -> None:
        """Leave the room: close the socket (the server tells the others ``peer-left``)."""
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed:
            try:
                await asyncio.wait_for(ws.close(), self.connect_timeout)
            except Exception as exc:  # leaving anyway: the server notices the drop
                log.debug("closing the signaling socket failed: %r", exc)
        if self._task is not None:
            self._task.cancel()
            # It may have died of an error already: _ended reported that one.
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._close_session()

    # -- internals ---------------------------------------------------------------

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _joined(
        self, ws: aiohttp.ClientWebSocketResponse, peer_list: PeerList, rejoin: bool
    ) -> None:
        self._ws = ws
        if peer_list.resume_token is not None:
            self.resume_token = peer_list.resume_token
        log.info(
            "%s %s room %s (%d peers there)",
            self.peer_id,
            "rejoined" if rejoin else "joined",
            self.room or peer_list.room or "default",
            len(peer_list.peers),
        )
        self._on_joined(peer_list, rejoin)

    def _room_param(self) -> dict[str, str] | None:
        if self.room is None or "room" in parse_qs(urlsplit(self.url).query):
            return None
        return {"room": self.room}

    async def _connect_and_join(self) -> tuple[aiohttp.ClientWebSocketResponse, PeerList]:
        session = self._session
        if session is None:  # pragma: no cover - connect() creates it
            raise SignalingError("client is closed")
        try:
            async with asyncio.timeout(self.connect_timeout):  # a dropped SYN waits for minutes
                ws = await session.ws_connect(
                    self.url,
                    # The room (also in the join) lets a load balancer keep a room on one node.
                    params=self._room_param(),
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.connect_timeout),
                    heartbeat=self.heartbeat,
                    max_msg_size=4 * 1024 * 1024,
                )
        except TimeoutError:
            raise SignalingError(
                f"cannot reach signaling server {self.url}: no answer in {self.connect_timeout:g} s"
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            raise SignalingError(
                f"signaling server {self.url} refused the connection: HTTP {exc.status}"
                f"{_HTTP_REFUSALS.get(exc.status, '')}"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise SignalingError(f"cannot reach signaling server {self.url}: {exc}") from None
        try:
            join = Join(self.peer_id, self.room, self.resume_token, self.token)
            await ws.send_str(serialize(join))
            async with asyncio.timeout(self.connect_timeout * 2):
                peer_list = await self._await_peer_list(ws)
        except BaseException:
            await ws.close()
            raise
        return ws, peer_list

    async def _await_peer_list(self, ws: aiohttp.ClientWebSocketResponse) -> PeerList:
        error: Error | None = None
        while True:
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                message = _parse_server_frame(msg.data)
                if isinstance(message, PeerList):
                    return message
                if isinstance(message, Error):
                    error = message  # the close follows
                continue
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
            ):
                code = ws.close_code
                if error is not None:
                    raise JoinRefused(error.code, error.message)
                if code is not None and code in mesh.REFUSAL_CLOSE_CODES:
                    raise JoinRefused(mesh.REFUSAL_CLOSE_CODES[code], f"close code {code}")
                raise SignalingError(f"server closed the connection before peer-list (code {code})")
            if msg.type is aiohttp.WSMsgType.ERROR:
                raise SignalingError(f"signaling connection failed: {ws.exception()}")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> int | None:
        """Dispatch messages until the socket ends; returns its close code."""
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                message = _parse_server_frame(msg.data)
                if isinstance(message, Error):
                    log.warning("server error %s: %s", message.code, message.message)
                if message is not None:
                    try:
                        self._on_message(message)
                    except Exception:  # the owner's bug must not end signaling
                        log.exception(
                            "handling a %s from the server failed", type(message).__name__
                        )
            elif msg.type is aiohttp.WSMsgType.ERROR:
                break
        return ws.close_code

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The reconnecting task is gone: unless we closed it, say so, never silently."""
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        if exc is None:
            return  # a rejoin that failed for good: already reported through on_lost
        log.error("signaling stopped: %r", exc, exc_info=exc)
        self._ws = None
        self.fatal = SignalingError(f"signaling stopped: {exc!r}")
        self._on_lost(None)

    async def _run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not self._closing:
            code = await self._read(ws)
            self._ws = None
            if self._closing:
                return
            log.warning("signaling connection lost (close code %s); reconnecting", code)
            self._on_lost(code)
            rejoined = await self._rejoin()
            if rejoined is None:
                return
            ws = rejoined

    async def _rejoin(self) -> aiohttp.ClientWebSocketResponse | None:
        attempt = 0
        refusals = 0
        while not self._closing:
            await asyncio.sleep(mesh.reconnect_delay(attempt, random.random()))
            attempt += 1
            try:
                ws, peer_list = await self._connect_and_join()
            except JoinRefused as exc:
                refusals += 1
                if exc.code == "bad-resume-token":
                    self.resume_token = None  # someone else holds our ID now: ask normally
                if mesh.on_join_refused(exc.code, refusals, rejoin=True) is mesh.JoinRetry.FAIL:
                    log.error("rejoin failed for good: %s", exc)
                    self.fatal = exc
                    self._on_lost(None)
                    return None
                log.info("rejoin refused: %s; retrying", exc)
                continue
            except (SignalingError, TimeoutError) as exc:
                log.info("reconnect attempt %d failed: %s", attempt, exc)
                continue
            self.reconnects += 1
            self._joined(ws, peer_list, rejoin=True)
            return ws
        return None


_HTTP_REFUSALS = {
    403: " (this origin is not allowed)",
    429: " (too many connections from this address)",
}


def _parse_server_frame(text: str) -> Message | None:
    """A frame from the server, or None (logged) when it is not valid protocol."""
    try:
        return parse(text)
    except ProtocolError as exc:
        log.warning("ignoring bad frame from server: %s", exc.message)
        return None
