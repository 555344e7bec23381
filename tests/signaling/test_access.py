"""Tokens, origins, per-address caps and TURN credentials on a real server over real sockets."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import aiohttp
import jwt
import pytest

from signaling.auth import mint_token
from signaling.ice import IceServer
from signaling.protocol import CloseCode
from signaling.server import ServerConfig
from signaling.turn import TurnMinter, turn_credentials
from tests.signaling.clients import Clients, Peer, clients
from tests.signaling.conftest import FAST_LIMITS
from tests.signaling.test_http import get_metrics
from tests.support import RunningServer, running_server

SECRET = b"s" * 32
FOREVER = {"sub": "alice", "room": "lobby", "exp": 2**33}
TURN = TurnMinter((IceServer("turn:turn.test:3478?transport=udp"),), b"turn-secret", ttl=600)
AUTH = ServerConfig(
    limits=replace(FAST_LIMITS, max_frame_bytes=16384),  # room for an oversized token
    auth_secret=SECRET,
    ice_servers=(IceServer("stun:stun.test:3478"),),
    turn=TURN,
)


def tok(room: str = "lobby", peer: str = "alice", ttl: float = 3600, **claims: Any) -> str:
    if claims:
        body = {"sub": peer, "room": room, "exp": int(time.time() + ttl), **claims}
        return jwt.encode(body, SECRET, algorithm="HS256")
    return mint_token(SECRET, room, peer, ttl)


async def join_with(
    peers: Clients,
    peer: str | None,
    room: str = "lobby",
    params: dict[str, str] | None = None,
    **fields: Any,
) -> Peer:
    client = await peers.connect(peer or "", params=params)
    message: dict[str, Any] = {"type": "join", "room": room, **fields}
    if peer is not None:
        message["peerId"] = peer
    await client.send(**message)
    return client


async def expect_refused(client: Peer, code: str) -> str:
    error = await client.recv_error(code)
    assert await client.expect_close() == CloseCode.UNAUTHORIZED
    message: str = error["message"]
    return message


@pytest.fixture
async def auth_server() -> Any:
    async with running_server(AUTH) as running:
        yield running


@pytest.fixture
async def auth_peers(auth_server: RunningServer) -> Any:
    async with clients(auth_server.ws_url) as opened:
        yield opened


async def test_a_valid_token_joins_and_gets_ice_servers_with_minted_turn(
    auth_peers: Clients,
) -> None:
    alice = await join_with(auth_peers, "alice", token=tok())
    peer_list = await alice.recv_type("peer-list")
    stun, turn = peer_list["iceServers"]
    assert stun == {"urls": "stun:stun.test:3478"}
    assert turn["urls"] == "turn:turn.test:3478?transport=udp"
    expiry, _, who = turn["username"].partition(":")
    assert who == "alice" and 590 < int(expiry) - time.time() <= 600
    assert turn["credential"] == turn_credentials(b"turn-secret", "alice", int(expiry))[1]
    # From the URL too; and without peerId the ID is the token's.
    bob = await join_with(auth_peers, None, params={"token": tok(peer="bob")})
    assert (await bob.recv_type("peer-list"))["peers"] == ["alice"]
    assert (await alice.recv_type("peer-joined"))["peerId"] == "bob"


@pytest.mark.parametrize(
    ("token", "code"),
    [
        (None, "auth-required"),
        (tok(ttl=-120), "token-expired"),
        (tok(room="elsewhere"), "invalid-token"),
        (tok(peer="mallory"), "invalid-token"),
        (tok(nbf=int(time.time()) + 3600), "invalid-token"),
        (jwt.encode(FOREVER, b"w" * 32), "invalid-token"),  # another secret
        (jwt.encode(FOREVER, None, "none"), "invalid-token"),
        ("x" * 5000, "invalid-token"),
        ("garbage", "invalid-token"),
    ],
)
async def test_refused_joins_learn_nothing_about_the_room(
    auth_peers: Clients, token: str | None, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    member = await join_with(auth_peers, "bob", token=tok(peer="bob"))
    await member.recv_type("peer-list")
    caplog.set_level(logging.INFO, logger="signaling.server")
    fields = {"token": token} if token is not None else {}
    intruder = await join_with(auth_peers, "alice", **fields)
    error = await intruder.recv_type("error")  # the first and only frame: no peer-list
    assert error["code"] == code and "bob" not in error["message"]
    assert await intruder.expect_close() == CloseCode.UNAUTHORIZED
    await member.expect_silence()  # no peer-joined, no probe
    refused = [r.getMessage() for r in caplog.records if "refused a join" in r.getMessage()]
    assert len(refused) == 1
    if token:
        assert token[:40] not in refused[0]  # the reason is logged, never the token


async def test_a_resume_still_needs_a_valid_token(auth_peers: Clients) -> None:
    alice = await join_with(auth_peers, "alice", token=tok())
    resume = (await alice.recv_type("peer-list"))["resumeToken"]
    thief = await join_with(auth_peers, "alice", resumeToken=resume)
    await expect_refused(thief, "auth-required")
    back = await join_with(auth_peers, "alice", resumeToken=resume, token=tok())
    await back.recv_type("peer-list")
    assert await alice.expect_close() == CloseCode.REPLACED


async def test_config_json_needs_a_token_when_auth_is_on(auth_server: RunningServer) -> None:
    url = auth_server.http_url + "/config.json"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "auth-required"
        async with http.get(url, params={"token": tok(ttl=-100)}) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "token-expired"
        header = {"Authorization": f"Bearer {tok(peer='carol')}"}
        async with http.get(url, headers=header) as response:
            assert response.status == 200
            servers = (await response.json())["iceServers"]
    assert servers[0] == {"urls": "stun:stun.test:3478"}
    assert servers[1]["username"].endswith(":carol")


async def test_without_auth_tokens_are_ignored_and_nothing_changes(peers: Clients) -> None:
    alice = await join_with(peers, "alice", token="whatever")
    peer_list = await alice.recv_type("peer-list")
    assert "iceServers" not in peer_list  # none configured: the field is left out


async def ws_status(url: str, headers: dict[str, str] | None = None) -> int:
    """101 when the upgrade succeeded, else the HTTP status of the refusal."""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


async def test_origins_outside_the_allow_list_get_403() -> None:
    config = ServerConfig(limits=FAST_LIMITS, allowed_origins=("https://app.example.com",))
    async with running_server(config) as server:
        url = server.ws_url
        assert await ws_status(url, {"Origin": "https://evil.example.com"}) == 403
        assert await ws_status(url, {"Origin": "https://app.example.com"}) == 101
        assert await ws_status(url) == 101  # a bot sends no Origin
        own_page = f"http://127.0.0.1:{server.port}"
        assert await ws_status(url, {"Origin": own_page}) == 101
        metrics = await get_metrics(server)
        assert metrics['meshpeer_refused_total{reason="origin"}'] == 1


async def test_per_address_caps_answer_429() -> None:
    limits = replace(FAST_LIMITS, ip_connections=2, ip_connects_per_minute=5)
    async with (
        running_server(ServerConfig(limits=limits)) as server,
        clients(server.ws_url) as peers,
    ):
        first = [await peers.join("a"), await peers.join("b")]
        assert await ws_status(server.ws_url) == 429  # a third open connection
        await first[0].ws.close()
        await first[1].ws.close()
        # 2 attempts so far (the refused one is not counted): 3 more fit in the minute's 5.
        for _ in range(3):
            assert await ws_status(server.ws_url) == 101
        assert await ws_status(server.ws_url) == 429
        metrics = await get_metrics(server)
        assert metrics['meshpeer_refused_total{reason="ip-connections"}'] == 1
        assert metrics['meshpeer_refused_total{reason="ip-rate"}'] == 1


async def test_behind_a_trusted_proxy_the_forwarded_address_is_counted() -> None:
    limits = replace(FAST_LIMITS, ip_connections=1)
    for trust, second_client_status in ((True, 101), (False, 429)):
        config = ServerConfig(limits=limits, trust_proxy=trust)
        async with running_server(config) as server, aiohttp.ClientSession() as http:
            one = await http.ws_connect(server.ws_url, headers={"X-Forwarded-For": "1.1.1.1"})
            status = await ws_status(server.ws_url, {"X-Forwarded-For": "6.6.6.6, 2.2.2.2"})
            assert status == second_client_status, trust
            await one.close()


async def test_fresh_turn_credentials_come_before_the_old_ones_expire() -> None:
    # Nothing listens there: the agent's check of it just fails, quietly and quickly.
    urls = (IceServer("turn:127.0.0.1:9?transport=udp"),)
    minter = TurnMinter(urls, b"turn-secret", ttl=1.0)  # refreshed every 0.5 s
    config = ServerConfig(limits=FAST_LIMITS, turn=minter)
    async with running_server(config) as server, clients(server.ws_url) as peers:
        alice = await peers.join("alice")
        (first,) = alice.peer_list["iceServers"]
        fresh = await alice.recv_type("ice-servers", within=3)
        (turn,) = fresh["iceServers"]
        assert turn["username"].endswith(":alice") and turn["urls"] == first["urls"]
        expiry = int(turn["username"].split(":")[0])
        assert abs(expiry - (time.time() + 1)) < 1.5
        assert turn["credential"] == turn_credentials(b"turn-secret", "alice", expiry)[1]
        await alice.recv_type("ice-servers", within=3)  # and again, as long as it stays
        # Clients cannot send it (it would hand others a relay of the sender's choice).
        await alice.send(type="ice-servers", iceServers=[])
        await alice.recv_error("reserved-type")
        # An agent uses the fresh ones for the connections it makes from then on.
        from peer.agent import Agent

        async with Agent(server.ws_url, peer_id="bot", stats_interval=None) as bot:
            before = bot.ice_servers
            deadline = time.monotonic() + 5
            while bot.ice_servers == before:
                assert time.monotonic() < deadline, "the agent kept the old credentials"
                await asyncio.sleep(0.05)
            assert bot.ice_servers[0].username != before[0].username


async def test_no_refresh_without_turn(peers: Clients) -> None:
    alice = await peers.join("alice")
    await alice.expect_silence(0.3)
