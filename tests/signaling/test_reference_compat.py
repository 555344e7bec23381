"""The reference client's view: the same session against the reference Go server and ours
must produce the same frames, apart from the documented extensions (room, resumeToken)
and the reference's quirks (omitted empty peers, peer-list in map order)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import free_port, reference_server_binary, running_server, seconds

REPO = Path(__file__).resolve().parents[2]
Transcript = dict[str, list[Any]]


@asynccontextmanager
async def reference_server(binary: Path) -> AsyncIterator[str]:
    port = free_port()
    env = {**os.environ, "BIND_HOST": "127.0.0.1", "PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        str(binary), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        deadline = asyncio.get_running_loop().time() + seconds(10)
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError("the reference server did not start") from None
                await asyncio.sleep(0.05)
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        proc.kill()
        await proc.wait()


def normalise(frame: dict[str, Any]) -> dict[str, Any]:
    """What the reference client can rely on from either server."""
    frame = dict(frame)
    if frame["type"] == "peer-list":
        frame.pop("room", None)  # extensions the reference client ignores
        frame.pop("resumeToken", None)
        frame["peers"] = sorted(frame.get("peers") or [])  # the reference: map order, omitempty
    return frame


async def session(url: str) -> Transcript:
    """The reference client's flow for three peers; everything each one receives."""
    got: Transcript = {"p1": [], "p2": [], "p3": []}
    async with aiohttp.ClientSession() as http:
        sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}

        async def receive(name: str) -> str:
            msg = await asyncio.wait_for(sockets[name].receive(), seconds(5))
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            got[name].append(normalise(json.loads(msg.data)))
            data: str = msg.data
            return data

        async def send(name: str, text: str, *receivers: str) -> None:
            await sockets[name].send_str(text)
            for receiver in receivers:
                assert await receive(receiver) == text  # relayed byte for byte

        for i, name in enumerate(["p1", "p2", "p3"]):
            sockets[name] = await http.ws_connect(url)
            await sockets[name].send_str(json.dumps({"type": "join", "peerId": name}))
            await receive(name)  # peer-list
            for earlier in ["p1", "p2"][:i]:
                await receive(earlier)  # peer-joined
        # The newcomer offers everyone in its peer list; they answer; candidates trickle.
        for peer in ["p1", "p2"]:
            await send(
                "p3", f'{{"type":"offer","from":"p3","to":"{peer}","sdp":"v=0\\r\\n"}}', peer
            )
            await send(peer, f'{{"type":"answer","from":"{peer}","to":"p3","sdp":"v=0"}}', "p3")
            candidate = (
                f'{{"type":"candidate","from":"p3","to":"{peer}","candidate":{{"candidate":'
                '"candidate:1 1 udp 2122260223 abcd.local 50000 typ host","sdpMid":"0",'
                '"sdpMLineIndex":0,"usernameFragment":"uf"}}'
            )
            await send("p3", candidate, peer)
        await send("p1", '{"type":"chat","from":"p1","text":"hello all"}', "p2", "p3")
        await sockets["p2"].close()
        await receive("p1")  # peer-left
        await receive("p3")
        for ws in sockets.values():
            await ws.close()
    return got


@pytest.mark.slow
async def test_reference_client_sees_the_same_session_on_both_servers() -> None:
    binary = reference_server_binary()
    async with reference_server(binary) as url:
        reference = await session(url)
    async with running_server() as ours:
        mine = await session(ours.ws_url)
    assert mine == reference
    assert mine["p1"][0] == {"type": "peer-list", "peers": []}
    assert mine["p1"][-1] == {"type": "peer-left", "peerId": "p2"}
