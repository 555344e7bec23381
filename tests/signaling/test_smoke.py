from __future__ import annotations

import json

import aiohttp

from tests.support import RunningServer


async def test_join_gets_empty_peer_list(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(server.ws_url) as ws:
        await ws.send_str(json.dumps({"type": "join", "peerId": "alice"}))
        msg = json.loads(await ws.receive_str())
        assert msg["type"] == "peer-list"
        assert msg["peers"] == []
