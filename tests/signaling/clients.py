"""Test clients for the signaling server: a protocol-aware aiohttp client and a raw one.

The raw client speaks WebSocket over a plain asyncio stream so a test can make it behave
like a dead or stalled peer (never pong, never read, small receive buffer), which the
aiohttp client cannot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import aiohttp

from tests.support import RunningServer, seconds

Frame = dict[str, Any]
#: One label of a sample: ``label="value"``, the value escaped as the text format wants.
_LABEL = r'[a-z_]+="(?:[^"\\\n]|\\[\\"n])*"'
#: One sample line of /metrics: ``name value`` or ``name{label="value",...} value``.
SAMPLE = re.compile(
    rf"^(?P<name>[a-z_][a-z0-9_]*)(?P<labels>\{{{_LABEL}(?:,{_LABEL})*\}})? (?P<n>\S+)$"
)
CLOSED_TYPES = frozenset(
    {
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.ERROR,
    }
)


class Peer:
    """One WebSocket client with helpers to wait for frames and for the close."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, name: str = "") -> None:
        self.ws = ws
        self.name = name
        self.peers: list[str] = []
        self.token: str | None = None
        self.peer_list: Frame = {}

    async def send(self, **fields: Any) -> None:
        await self.ws.send_str(json.dumps(fields))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv_text(self, within: float = 5.0) -> str:
        msg = await asyncio.wait_for(self.ws.receive(), seconds(within))
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(
                f"{self.name}: expected a text frame, got {msg.type!r} {msg.data!r}"
            )
        text: str = msg.data
        return text

    async def recv(self, within: float = 5.0) -> Frame:
        frame: Frame = json.loads(await self.recv_text(within))
        return frame

    async def recv_type(self, kind: str, within: float = 5.0) -> Frame:
        """The next frame, which must be of type ``kind``."""
        frame = await self.recv(within)
        assert frame.get("type") == kind, f"{self.name}: expected {kind!r}, got {frame}"
        return frame

    async def recv_error(self, code: str) -> Frame:
        frame = await self.recv_type("error")
        assert frame["code"] == code, frame
        assert isinstance(frame["message"], str) and frame["message"], frame
        return frame

    async def expect_close(self, within: float = 5.0) -> int | None:
        """Read until the server closes; the code of its close frame, None if TCP just ended.

        The server waits for the client's answer to its close frame, so aiohttp's
        ``ws.close_code`` (what the peer agent reads) must agree with the frame.
        """

        async def until_closed() -> int | None:
            while True:
                try:
                    msg = await self.ws.receive()
                except ConnectionResetError:
                    # aiohttp answering a ping that was queued before the close frame, on a
                    # socket the server already closed: the close frame is still to be read.
                    continue
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    assert self.ws.close_code == msg.data, (self.ws.close_code, msg.data)
                    return int(msg.data)
                if msg.type in CLOSED_TYPES:
                    return None

        return await asyncio.wait_for(until_closed(), seconds(within))

    async def expect_silence(self, duration: float = 0.2) -> None:
        """Nothing arrives for ``duration`` seconds."""
        try:
            # Not receive(timeout=...): aiohttp restarts that timeout at every ping it answers.
            msg = await asyncio.wait_for(self.ws.receive(), duration)
        except TimeoutError:
            return
        raise AssertionError(f"{self.name}: expected silence, got {msg.type!r} {msg.data!r}")

    async def roundtrip(self, other: Peer, kind: str = "chat", **fields: Any) -> Frame:
        """Send ``other`` a message and return it as received."""
        await self.send(type=kind, to=other.name, **fields)
        return await other.recv_type(kind)


class Clients:
    """Opens clients and closes them all at the end of a test. Given several servers (nodes
    sharing rooms), each new client goes to the next one in turn."""

    def __init__(self, http: aiohttp.ClientSession, url: str | Sequence[str]) -> None:
        self.http = http
        self.urls = [url] if isinstance(url, str) else list(url)
        self.url = self.urls[0]
        self._turn = 0

    async def connect(self, name: str = "", url: str | None = None, **kwargs: Any) -> Peer:
        """A new connection, to ``url`` or else to the next of the servers in turn."""
        params = kwargs.pop("params", None)
        if url is None:
            url = self.urls[self._turn % len(self.urls)]
            self._turn += 1
        ws = await self.http.ws_connect(url, params=params, **kwargs)
        return Peer(ws, name)

    async def join(
        self, name: str, room: str | None = None, *, url_room: str | None = None, **kwargs: Any
    ) -> Peer:
        """Connect, join as ``name`` and read the ``peer-list``."""
        peer = await self.connect(name, params={"room": url_room} if url_room else None, **kwargs)
        fields: dict[str, Any] = {"type": "join", "peerId": name}
        if room is not None:
            fields["room"] = room
        await peer.send(**fields)
        peer.peer_list = await peer.recv_type("peer-list")
        peer.peers = peer.peer_list["peers"]
        peer.token = peer.peer_list.get("resumeToken")
        return peer


@asynccontextmanager
async def clients(url: str | Sequence[str]) -> AsyncIterator[Clients]:
    async with aiohttp.ClientSession() as http:
        yield Clients(http, url)


# ---------------------------------------------------------------------------
# A raw WebSocket client over asyncio streams

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class RawClient:
    """Does the WebSocket handshake itself, then does exactly what the test says."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, path: str = "/ws", *, rcvbuf: int | None = None) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the window starts small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds(5))
        if not head.startswith(b"HTTP/1.1 101"):
            raise AssertionError(f"handshake refused: {head!r}")
        return cls(reader, writer)

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)

    def send_json(self, **fields: Any) -> None:
        self.send_frame(OP_TEXT, json.dumps(fields).encode())

    async def read_frame(self, within: float = 5.0) -> tuple[int, bytes]:
        async def read() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

        return await asyncio.wait_for(read(), seconds(within))

    async def recv_json(self, within: float = 5.0) -> Frame:
        """The next text frame as JSON, answering pings on the way (a live client)."""
        while True:
            opcode, payload = await self.read_frame(within)
            if opcode == OP_PING:
                self.send_frame(OP_PONG, payload)
                continue
            if opcode != OP_TEXT:
                raise AssertionError(f"expected a text frame, got opcode {opcode}: {payload!r}")
            frame: Frame = json.loads(payload)
            return frame

    async def join(self, name: str, room: str | None = None) -> Frame:
        fields: dict[str, Any] = {"type": "join", "peerId": name}
        if room is not None:
            fields["room"] = room
        self.send_json(**fields)
        frame = await self.recv_json()
        assert frame["type"] == "peer-list", frame
        return frame

    async def wait_closed(self, within: float = 10.0) -> bytes:
        """Read (ignoring pings) until the server closes the TCP connection; returns the rest."""
        rest = b""

        async def drain() -> None:
            nonlocal rest
            while chunk := await self.reader.read(1 << 16):
                rest += chunk

        with suppress(ConnectionResetError):
            await asyncio.wait_for(drain(), seconds(within))
        return rest

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def drain_until_close(peer: Peer) -> tuple[list[dict[str, Any]], int | None]:
    """Every text frame until the close frame, and that frame's code (None: no close frame)."""
    frames: list[dict[str, Any]] = []
    while True:
        msg = await asyncio.wait_for(peer.ws.receive(), seconds(10))
        if msg.type is aiohttp.WSMsgType.TEXT:
            frames.append(json.loads(msg.data))
        elif msg.type is aiohttp.WSMsgType.CLOSE:
            assert peer.ws.close_code == msg.data  # what the peer agent reads
            return frames, int(msg.data)
        else:
            return frames, None


async def get_json(server: RunningServer, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(server.http_url + path) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        return await response.json()


async def get_metrics(server: RunningServer) -> dict[str, float]:
    """Samples by name, with labels as written (name{label="value"}); checks the text
    format."""
    async with aiohttp.ClientSession() as http, http.get(server.http_url + "/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    assert text.endswith("\n")
    samples: dict[str, float] = {}
    described: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            described.add(parts[2])
            if parts[1] == "TYPE":
                assert parts[3] in ("counter", "gauge"), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        assert match["name"] in described, f"{match['name']} has no HELP/TYPE"
        key = match["name"] + (match["labels"] or "")
        samples[key] = float(match["n"])
    return samples
