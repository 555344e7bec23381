from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from peer import events as ev
from peer.ice import IceServer, IceServerError, arrange, parse_ice_server, rtc_configuration
from tests.peer.helpers import agents, full_mesh_flowing
from tests.support import RunningServer, eventually, seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stun:stun.example.org:3478", IceServer("stun:stun.example.org:3478")),
        ("stun:10.0.0.1", IceServer("stun:10.0.0.1")),
        (
            "turn:user:secret@turn.example.org:3478",
            IceServer("turn:turn.example.org:3478", "user", "secret"),
        ),
        (
            "turn:u:p@10.0.0.1:3478?transport=tcp",
            IceServer("turn:10.0.0.1:3478?transport=tcp", "u", "p"),
        ),
        ("turns:u:p@turn.example.org:5349", IceServer("turns:turn.example.org:5349", "u", "p")),
        ("stun:[2001:db8::1]:3478", IceServer("stun:[2001:db8::1]:3478")),
    ],
)
def test_parse(text: str, expected: IceServer) -> None:
    assert parse_ice_server(text) == expected


@pytest.mark.parametrize(
    "text", ["http://x", "turn:turn.example.org:3478", "stun:u:p@host:1", "stun:host:99999", ""]
)
def test_bad_urls(text: str) -> None:
    with pytest.raises(IceServerError):
        parse_ice_server(text)


def test_default_configuration_has_no_server() -> None:
    """aiortc's own default is a public STUN server: ours must be an explicit empty list."""
    config = rtc_configuration([])
    assert config.iceServers == []
    config = rtc_configuration([parse_ice_server("turn:u:p@h:3478")])
    assert config.iceServers is not None
    (server,) = config.iceServers
    assert (server.urls, server.username, server.credential) == ("turn:h:3478", "u", "p")


def test_arrange_puts_the_best_turn_url_first_and_rotates_on_retries() -> None:
    """aioice uses the first STUN and the first TURN URL only: the order is the choice."""
    udp = IceServer("turn:t:3478", "u", "p")
    tcp = IceServer("turn:t:3478?transport=tcp", "u", "p")
    tls = IceServer("turns:t:5349?transport=tcp", "u", "p")
    tls_over_udp = IceServer("turns:t:5349?transport=udp", "u", "p")  # aioice cannot
    stun = IceServer("stun:s:3478")
    servers = [tls, tcp, tls_over_udp, stun, udp]
    assert arrange(servers) == [stun, udp, tcp, tls]
    assert arrange(servers, attempt=1) == [stun, tcp, tls, udp]
    assert arrange(servers, attempt=2) == [stun, tls, udp, tcp]
    assert arrange(servers, attempt=3) == arrange(servers)
    assert arrange([stun]) == [stun] and arrange([]) == []


@pytest.fixture
def silent_udp_port() -> Iterator[int]:
    """A UDP port on loopback that receives and never answers: a TURN server behind a
    firewall that drops packets (no ICMP error either)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.slow
async def test_a_silent_ice_server_delays_no_connection(
    server: RunningServer, silent_udp_port: int
) -> None:
    """aiortc would wait 5 s per offer and per answer for it (PITFALLS): 10 s to connect.
    The agent checks servers off the negotiation path, leaves the silent one out and says so."""
    dead = [f"turn:u:p@127.0.0.1:{silent_udp_port}", f"stun:127.0.0.1:{silent_udp_port}"]
    problems: list[ev.IceServerProblem] = []
    started = time.monotonic()
    async with agents(server.ws_url, ["alice", "bob"], ice_servers=dead) as (alice, bob):
        for agent in (alice, bob):
            agent.add_listener(lambda e: isinstance(e, ev.IceServerProblem) and problems.append(e))
        await eventually(lambda: full_mesh_flowing([alice, bob], 1), seconds(15), "media both ways")
        connected_after = time.monotonic() - started
        await eventually(
            lambda: len(problems) == 4, seconds(5), "a problem report per server and agent"
        )
    print(f"media both ways after {connected_after:.3f} s")
    assert connected_after < seconds(4), f"{connected_after:.1f} s: something waited on it"
    assert {p.url for p in problems} == {
        f"turn:127.0.0.1:{silent_udp_port}",
        f"stun:127.0.0.1:{silent_udp_port}",
    }
    assert all("no answer within" in p.reason for p in problems)
