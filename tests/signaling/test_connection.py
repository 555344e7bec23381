"""The aiohttp details signaling.connection leans on, pinned over a real socket: an aiohttp
upgrade that changes one of them fails here, by name, instead of corrupting the relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from signaling.connection import close_frame, text_frame
from tests.support import seconds

SIZES = (0, 125, 126, 1000, 65535, 65536, 70000)  # each WebSocket length encoding, at its edges


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    """A handler that writes as Connection does: raw frames on ``request.transport``,
    mixed with aiohttp's own writer, and a close answered by hand (autoclose off)."""
    seen: dict[str, object] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, autoclose=False)
        writer = await ws.prepare(request)
        # Connection's writer task calls prepare() again to get the stream writer back.
        seen["same_writer"] = (await ws.prepare(request)) is writer
        seen["drain"] = callable(getattr(writer, "drain", None))
        transport = request.transport
        assert transport is not None
        seen["limits"] = transport.get_write_buffer_limits()
        await ws.send_str(f"first {seen}")  # aiohttp's writer ...
        for size in SIZES:  # ... then ours on the same transport, in order
            transport.write(text_frame("x" * size))
        await ws.send_str("last")
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.TEXT and msg.data == "please close"
        transport.write(close_frame(4410))
        msg = await ws.receive()  # autoclose=False: the client's answer reaches the reader
        seen["close_answer"] = msg.type is aiohttp.WSMsgType.CLOSE
        transport.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        await runner.cleanup()
    assert seen.get("close_answer") is True, "aiohttp no longer hands the close to the reader"


async def test_raw_frames_interleave_with_aiohttps_writer_in_order(echo_url: str) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(echo_url) as ws:
        first = await asyncio.wait_for(ws.receive(), seconds(5))
        assert first.type is aiohttp.WSMsgType.TEXT
        assert "'same_writer': True" in first.data, "ws.prepare() no longer returns its writer"
        assert "'drain': True" in first.data, "the stream writer has no drain()"
        for size in SIZES:
            msg = await asyncio.wait_for(ws.receive(), seconds(5))
            assert msg.type is aiohttp.WSMsgType.TEXT and msg.data == "x" * size, size
        last = await asyncio.wait_for(ws.receive(), seconds(5))
        assert last.data == "last"
        await ws.send_str("please close")
        closing = await asyncio.wait_for(ws.receive(), seconds(5))
        assert closing.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4410


def test_frames_are_what_rfc_6455_says() -> None:
    assert text_frame("hi") == b"\x81\x02hi"
    assert text_frame("x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame("x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")
    assert close_frame(1001) == b"\x88\x02\x03\xe9"
    assert text_frame("\ud800") == b"\x81\x01?"  # a lone surrogate goes out as "?"
