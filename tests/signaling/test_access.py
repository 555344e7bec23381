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
from aiohttp.typedefs import LooseHeaders

from signaling.auth import LEEWAY, mint_token
from signaling.ice import IceServer
from signaling.protocol import CloseCode
from signaling.server import ServerConfig
from signaling.turn import TurnMinter, turn_credentials
from tests.signaling.clients import Clients, Peer, clients, get_metrics
from tests.signaling.conftest import FAST_LIMITS
from tests.support import RunningServer, running_server, seconds

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
        ("ey\ud800.e30.", "invalid-token"),  # a lone surrogate: no UTF-8 for it
        ("\u00e9" * 2100, "invalid-token"),  # 4200 bytes in UTF-8
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


@pytest.mark.parametrize(
    "sub", ["bob\x1fjoined", "eve\nFAKE LOG LINE", "x" * 129, "\u202emallory", "Jose\u0301"]
)
async def test_a_token_whose_sub_is_no_valid_peer_id_is_refused(
    auth_server: RunningServer, auth_peers: Clients, sub: str
) -> None:
    """A join without peerId takes its ID from sub: sub obeys the rules of peerId (\\x1f
    would let a member forge frames through the cluster's envelopes)."""
    member = await join_with(auth_peers, "bob", token=tok(peer="bob"))
    await member.recv_type("peer-list")
    intruder = await join_with(auth_peers, None, token=tok(peer=sub))
    await expect_refused(intruder, "invalid-token")
    await member.expect_silence()
    async with aiohttp.ClientSession() as http:  # no TURN credentials minted for it either
        url = auth_server.http_url + "/config.json"
        async with http.get(url, params={"token": tok(peer=sub)}) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "invalid-token"


async def test_with_an_audience_only_tokens_minted_for_it_get_in() -> None:
    config = replace(AUTH, auth_audience="meshpeer.example")
    async with running_server(config) as server, clients(server.ws_url) as peers:
        alice = await join_with(peers, "alice", token=tok(aud="meshpeer.example"))
        await alice.recv_type("peer-list")
        for aud in ({}, {"aud": "other.example"}):
            bob = await join_with(peers, "bob", token=tok(peer="bob", **aud))
            await expect_refused(bob, "invalid-token")
    async with running_server(AUTH) as server, clients(server.ws_url) as peers:
        other = await join_with(peers, "alice", token=tok(aud="other.example"))
        await expect_refused(other, "invalid-token")


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


async def ws_status(url: str, headers: LooseHeaders | None = None) -> int:
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


def forwarded(*lines: str) -> list[tuple[str, str]]:
    """``X-Forwarded-For`` header lines, one per value, as a client and then a proxy add them."""
    return [("X-Forwarded-For", line) for line in lines]


async def test_behind_a_proxy_that_appends_a_line_the_client_cannot_pick_its_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = replace(FAST_LIMITS, ip_connections=1)
    config = ServerConfig(limits=limits, trust_proxy=True)
    caplog.set_level(logging.INFO, logger="signaling.server")
    async with running_server(config) as server, aiohttp.ClientSession() as http:
        url = server.ws_url
        # The first line is the client's own (anything), the last one the proxy's.
        one = await http.ws_connect(url, headers=forwarded("6.6.6.6", "2.2.2.2"))
        assert await ws_status(url, forwarded("7.7.7.7", "2.2.2.2")) == 429
        assert await ws_status(url, forwarded("2.2.2.2", "3.3.3.3")) == 101  # a victim's
        # A value that is not an address: the socket's is counted, and that is logged once.
        held = await http.ws_connect(url, headers=forwarded("2.2.2.2", "bogus"))
        assert await ws_status(url) == 429  # 127.0.0.1 holds one already
        await held.close()
        assert await ws_status(url, forwarded("bogus-again")) == 101
        await one.close()
    warnings = [r.getMessage() for r in caplog.records if "X-Forwarded-For" in r.getMessage()]
    assert len(warnings) == 1 and "'bogus'" in warnings[0], warnings


async def test_an_ipv6_client_is_counted_by_its_64() -> None:
    limits = replace(FAST_LIMITS, ip_connections=1)
    config = ServerConfig(limits=limits, trust_proxy=True)
    async with running_server(config, host="::1") as server, aiohttp.ClientSession() as http:
        url = server.ws_url
        own = await http.ws_connect(url)  # counted as ::1, that is ::/64
        assert await ws_status(url) == 429
        await own.close()
        one = await http.ws_connect(url, headers=forwarded("2001:db8:1:2::1"))
        assert await ws_status(url, forwarded("2001:db8:1:2:ffff::2")) == 429  # same /64
        assert await ws_status(url, forwarded("2001:db8:1:3::1")) == 101
        four = await http.ws_connect(url, headers=forwarded("192.0.2.1"))
        assert await ws_status(url, forwarded("::ffff:192.0.2.1")) == 429  # the same IPv4
        assert await ws_status(url, forwarded("192.0.2.2")) == 101  # IPv4: per address
        await one.close()
        await four.close()


async def test_by_default_only_pages_of_the_servers_own_origin_connect() -> None:
    async with running_server(ServerConfig(limits=FAST_LIMITS)) as server:
        url, port = server.ws_url, server.port
        assert await ws_status(url) == 101  # no Origin: a bot, the agent
        assert await ws_status(url, {"Origin": f"http://127.0.0.1:{port}"}) == 101
        assert await ws_status(url, {"Origin": "https://evil.example"}) == 403
        assert await ws_status(url, {"Origin": f"https://127.0.0.1:{port}"}) == 403  # scheme
        assert await ws_status(url, {"Origin": f"http://localhost:{port}"}) == 403
        assert await ws_status(url, {"Origin": "null"}) == 403
        # The Host the page was loaded from, as a browser writes it, default port left out.
        own = {"Host": "meet.example", "Origin": "http://meet.example:80"}
        assert await ws_status(url, own) == 101
        assert await ws_status(url, {"Host": "[::1]:8080", "Origin": "http://[::1]:8080"}) == 101
        metrics = await get_metrics(server)
        assert metrics['meshpeer_refused_total{reason="origin"}'] == 4


async def test_allow_origin_star_and_the_public_url() -> None:
    anyone = ServerConfig(limits=FAST_LIMITS, allowed_origins=("*",))
    async with running_server(anyone) as server:
        assert await ws_status(server.ws_url, {"Origin": "https://evil.example"}) == 101
    proxied = ServerConfig(limits=FAST_LIMITS, public_url="https://rooms.example.com/")
    async with running_server(proxied) as server:
        assert await ws_status(server.ws_url, {"Origin": "https://rooms.example.com"}) == 101
        assert await ws_status(server.ws_url, {"Origin": "https://other.example.com"}) == 403


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


async def test_no_refresh_without_turn(nodes: list[RunningServer], peers: Clients) -> None:
    """Without TURN no refresh is even scheduled (listening for one would take hours)."""
    alice = await peers.join("alice")
    (conn,) = [c for node in nodes for c in node.server.connections if c.peer_id == "alice"]
    assert conn.ice_refresh is None
    await alice.expect_silence(0.3)


def turn_expiry(servers: list[dict[str, Any]]) -> int:
    """The expiry in the (one) minted TURN entry's username."""
    (turn,) = [server for server in servers if server["urls"].startswith("turn:")]
    return int(turn["username"].split(":")[0])


async def test_turn_credentials_end_with_the_token_and_so_do_their_refreshes() -> None:
    """Credentials minted for a token never outlive it (its ``exp`` plus the leeway it is
    accepted with), and a member whose token runs out gets no fresh ones: no relay for
    someone whose invitation is over. A member with a long token still gets them."""
    minter = TurnMinter(TURN.urls, TURN.secret, ttl=4)  # refreshed after 2 s
    # alice reads nothing while bob waits: no pings then (her client answers them on reads).
    limits = replace(FAST_LIMITS, heartbeat=seconds(30))
    config = ServerConfig(limits=limits, auth_secret=SECRET, turn=minter)
    # Expired 8 s ago: still accepted for LEEWAY (10 s), so admitted for 1-2 s more.
    exp = int(time.time()) - 8
    short = tok(peer="alice", exp=exp)
    admitted_until = exp + LEEWAY
    async with running_server(config) as server, clients(server.ws_url) as peers:
        alice = await join_with(peers, "alice", token=short)
        assert turn_expiry((await alice.recv_type("peer-list"))["iceServers"]) == admitted_until
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                server.http_url + "/config.json", headers={"Authorization": f"Bearer {short}"}
            ) as response,
        ):
            assert turn_expiry((await response.json())["iceServers"]) == admitted_until
        bob = await join_with(peers, "bob", token=tok(peer="bob"))
        bob_list = await bob.recv_type("peer-list")
        await alice.recv_type("peer-joined")
        fresh = await bob.recv_type("ice-servers", within=minter.ttl)
        assert turn_expiry(fresh["iceServers"]) > turn_expiry(bob_list["iceServers"])
        await alice.expect_silence(seconds(0.5))  # hers were due before bob's
