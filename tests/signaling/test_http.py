"""/healthz, /metrics and the log lines, checked after real traffic."""

from __future__ import annotations

import logging
import platform

import aiohttp
import pytest

from tests.signaling.clients import Clients, get_json, get_metrics
from tests.support import RunningServer, eventually, seconds

#: This test reads one server's own counters or log: it runs on one node.
ONE_NODE = pytest.mark.parametrize("nodes", ["1-node"], indirect=True)


@ONE_NODE
async def test_healthz_reports_rooms_peers_and_uptime(
    fast_server: RunningServer, peers: Clients
) -> None:
    health = await get_json(fast_server, "/healthz")
    assert health["status"] == "ok"
    assert (health["rooms"], health["peers"]) == (0, 0)
    assert isinstance(health["uptime"], float | int) and health["uptime"] >= 0
    # Keep references: a client that is garbage collected closes its connection.
    opened = [
        await peers.join("a", room="one"),
        await peers.join("b", room="one"),
        await peers.join("c", room="two"),
        await peers.connect("not-joined"),
    ]
    health = await get_json(fast_server, "/healthz")
    assert (health["rooms"], health["peers"], health["connections"]) == (2, 3, 4)
    assert health["uptime"] > 0
    assert len(opened) == 4


@ONE_NODE
async def test_metrics_count_connections_joins_leaves_routing_and_errors(
    fast_server: RunningServer, peers: Clients
) -> None:
    empty = await get_metrics(fast_server)
    for name in (
        "meshpeer_connections_total",
        "meshpeer_connections",
        "meshpeer_joins_total",
        "meshpeer_slow_clients_dropped_total",
        "meshpeer_rooms",
        "meshpeer_peers",
        "meshpeer_uptime_seconds",
    ):
        assert name in empty
    assert empty["meshpeer_joins_total"] == 0

    alice, bob = await peers.join("alice"), await peers.join("bob")
    carol = await peers.join("carol", room="elsewhere")
    await alice.recv_type("peer-joined")
    await alice.send(type="offer", to="bob", sdp="o")
    await bob.recv_type("offer")
    await bob.send(type="answer", to="alice", sdp="a")
    await alice.recv_type("answer")
    for _ in range(3):
        await alice.send(type="candidate", to="bob", candidate=None)
        await bob.recv_type("candidate")
    await alice.send(type="chat", text="all")
    await bob.recv_type("chat")
    await alice.send(type="offer", to="nobody", sdp="o")
    await alice.recv_error("unknown-peer")
    await alice.send_raw("{")
    await alice.recv_error("invalid-json")
    thief = await peers.connect("thief")
    await thief.send(type="join", peerId="alice")
    await thief.recv_error("id-taken")
    await bob.ws.close()
    await alice.recv_type("peer-left")
    await carol.ws.close()

    async def settled() -> bool:
        health = await get_json(fast_server, "/healthz")
        return bool(health["peers"] == 1 and health["connections"] == 1)

    await eventually(settled, seconds(5), "one peer and one connection left")
    m = await get_metrics(fast_server)
    assert m["meshpeer_connections_total"] == 4
    assert m["meshpeer_connections"] == 1
    assert m["meshpeer_joins_total"] == 3
    assert m['meshpeer_leaves_total{reason="closed"}'] == 2
    assert m['meshpeer_messages_routed_total{type="offer"}'] == 1
    assert m['meshpeer_messages_routed_total{type="answer"}'] == 1
    assert m['meshpeer_messages_routed_total{type="candidate"}'] == 3
    assert m['meshpeer_messages_routed_total{type="chat"}'] == 1
    assert m['meshpeer_errors_total{code="unknown-peer"}'] == 1
    assert m['meshpeer_errors_total{code="invalid-json"}'] == 1
    assert m['meshpeer_errors_total{code="id-taken"}'] == 1
    assert m["meshpeer_slow_clients_dropped_total"] == 0
    assert (m["meshpeer_rooms"], m["meshpeer_peers"]) == (1, 1)
    assert m["meshpeer_uptime_seconds"] > 0
    # Refused or failed messages are not counted as routed.
    assert sum(v for k, v in m.items() if k.startswith("meshpeer_messages_routed")) == 6


@ONE_NODE
async def test_one_info_line_per_join_and_leave_and_no_traffic_above_debug(
    fast_server: RunningServer, peers: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="signaling")
    alice, bob = await peers.join("alice"), await peers.join("bob")
    await alice.recv_type("peer-joined")
    secret = "v=0 SECRET-SDP-MARKER"
    for _ in range(5):
        await alice.send(type="offer", to="bob", sdp=secret)
        await bob.recv_type("offer")
    thief = await peers.connect("thief")
    await thief.send(type="join", peerId="alice")
    await thief.recv_error("id-taken")
    await bob.ws.close()
    await alice.recv_type("peer-left")
    await alice.ws.close()

    async def both_left() -> bool:
        return fast_server.server.registry.counts() == (0, 0)

    await eventually(both_left, seconds(5), "no room and no peer left")
    info = [
        r for r in caplog.records if r.name.startswith("signaling") and r.levelno >= logging.INFO
    ]
    messages = [r.getMessage() for r in info]
    assert len([m for m in messages if " joined room " in m]) == 2, messages
    assert len([m for m in messages if " left room " in m]) == 2, messages
    assert len([m for m in messages if m.startswith("refused 'alice'")]) == 1, messages
    assert len(messages) == 5, messages
    assert all(r.levelno == logging.INFO for r in info)
    assert not any(secret in m for m in messages)


async def test_metrics_add_the_process_metrics_and_each_server_counts_its_own(
    nodes: list[RunningServer], peers: Clients
) -> None:
    """prometheus-client's process, platform and GC collectors are on /metrics; two servers
    in one process (the 2-nodes case) keep apart counters: one registry per server."""
    alice, bob = await peers.join("alice"), await peers.join("bob")
    await alice.recv_type("peer-joined")
    await alice.send(type="offer", to="bob", sdp="o")
    await bob.recv_type("offer")
    scrapes = [await get_metrics(node) for node in nodes]
    for m in scrapes:
        assert m["process_cpu_seconds_total"] > 0
        assert m["process_resident_memory_bytes"] > 10_000_000
        assert 1 <= m["process_open_fds"] <= m["process_max_fds"]
        assert m["process_start_time_seconds"] > 1_600_000_000
        info = [k for k in m if k.startswith("python_info{")]
        assert len(info) == 1 and f'version="{platform.python_version()}"' in info[0], info
        assert 'python_gc_collections_total{generation="0"}' in m
    assert [m["meshpeer_joins_total"] for m in scrapes] == [2 // len(nodes)] * len(nodes)
    offers = [m.get('meshpeer_messages_routed_total{type="offer"}', 0) for m in scrapes]
    assert sum(offers) == 1
    if len(nodes) == 2:  # rooms shared through Redis: the cluster metrics too
        assert all(m["meshpeer_redis_up"] == 1 for m in scrapes)
        assert sum(m['meshpeer_cluster_messages_total{direction="out"}'] for m in scrapes) >= 1


async def test_client_chosen_types_cannot_grow_or_break_the_metrics(
    fast_server: RunningServer, peers: Clients
) -> None:
    from signaling.metrics import MAX_TYPE_LABELS, OTHER_TYPE_LABEL

    alice, bob = await peers.join("alice"), await peers.join("bob")
    await alice.recv_type("peer-joined")
    odd = 'quote" back\\slash\nnewline'
    kinds = [odd] + [f"app-{i}" for i in range(MAX_TYPE_LABELS + 10)]
    for kind in kinds:
        await alice.send(type=kind, to="bob")
        assert (await bob.recv())["type"] == kind  # still relayed as is
    m = await get_metrics(fast_server)  # parses: the odd label is escaped
    assert m['meshpeer_messages_routed_total{type="quote\\" back\\\\slash\\nnewline"}'] == 1
    routed = {k: v for k, v in m.items() if k.startswith("meshpeer_messages_routed_total")}
    assert len(routed) == MAX_TYPE_LABELS + 1
    assert sum(routed.values()) == len(kinds)
    assert routed[f'meshpeer_messages_routed_total{{type="{OTHER_TYPE_LABEL}"}}'] == 11


async def test_every_response_carries_the_security_headers_and_no_server_version() -> None:
    """The page's policy (no inline script, no framing, no Referer) and a ``Server`` that
    names no library version: on the page, its modules, JSON, metrics, errors and refused
    WebSocket upgrades alike."""
    from dataclasses import replace

    from signaling.server import ServerConfig
    from tests.signaling.conftest import FAST_LIMITS
    from tests.support import running_server

    config = ServerConfig(
        limits=replace(FAST_LIMITS, ip_connections=1), allowed_origins=("https://a.example",)
    )
    async with running_server(config) as server, aiohttp.ClientSession() as http:
        seen: dict[str, aiohttp.ClientResponse] = {}
        for path in ("/", "/static/app.js", "/config.json", "/healthz", "/metrics", "/nope"):
            async with http.get(server.http_url + path) as response:
                seen[path] = response
        async with http.get(server.http_url + "/", headers={"Host": "[::1]:99"}) as response:
            seen["/ (IPv6 Host)"] = response
        upgrade = {"Connection": "Upgrade", "Upgrade": "websocket"}
        evil = {**upgrade, "Origin": "https://evil.example"}
        async with http.get(server.ws_url, headers=evil) as response:
            seen["/ws 403"] = response
        ws = await http.ws_connect(server.ws_url)  # the one connection this address may open
        async with http.get(server.ws_url, headers=upgrade) as response:
            seen["/ws 429"] = response
        await ws.close()
    statuses = {path: r.status for path, r in seen.items()}
    assert statuses == {
        "/": 200,
        "/static/app.js": 200,
        "/config.json": 200,
        "/healthz": 200,
        "/metrics": 200,
        "/nope": 404,
        "/ (IPv6 Host)": 200,
        "/ws 403": 403,
        "/ws 429": 429,
    }
    for path, response in seen.items():
        headers = response.headers
        assert headers["Server"] == "meshpeer", path
        assert headers["Referrer-Policy"] == "no-referrer", path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        directives = headers["Content-Security-Policy"].split("; ")
        policy = {name: value for name, _, value in (d.partition(" ") for d in directives)}
        assert policy["default-src"] == "'self'", path
        assert policy["img-src"] == "'self' data: blob:", path
        assert policy["media-src"] == "'self' blob:", path
        assert policy["object-src"] == policy["base-uri"] == policy["frame-ancestors"] == "'none'"
        assert "script-src" not in policy and "'unsafe-inline'" not in str(policy), path
    # The page's own signaling socket, also for browsers whose 'self' does not cover ws:.
    host = f"127.0.0.1:{server.port}"
    assert (
        seen["/"]
        .headers["Content-Security-Policy"]
        .count(f"connect-src 'self' ws://{host} wss://{host};")
        == 1
    )
    # A Host that is not a plain name or IPv4 address is never copied into the header.
    assert "connect-src 'self';" in seen["/ (IPv6 Host)"].headers["Content-Security-Policy"]
