"""Dead, silent and slow clients: heartbeat, liveness probe, resume, slow-consumer drop,
graceful shutdown. Every accepted join still ends in exactly one peer-left."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.signaling.clients import Clients, Peer, RawClient, clients, drain_until_close
from tests.signaling.conftest import FAST_LIMITS, NodesFactory, ServerFactory, ws_urls
from tests.support import running_server, seconds

DeadOwner = Callable[[Clients, int, str], Awaitable[Any]]


async def silent_raw_owner(peers: Clients, port: int, name: str) -> RawClient:
    """Did the handshake and joined, then stopped reading: never answers a ping again."""
    raw = await RawClient.connect(port)
    await raw.join(name)
    return raw


async def autoping_off_owner(peers: Clients, port: int, name: str) -> Peer:
    """An aiohttp client that never pongs (autoping off) and never reads again."""
    return await peers.join(name, autoping=False)


@pytest.mark.parametrize("dead_owner", [silent_raw_owner, autoping_off_owner])
async def test_heartbeat_drops_a_client_that_stops_answering_pings(
    make_nodes: NodesFactory, dead_owner: DeadOwner
) -> None:
    heartbeat = seconds(0.4)
    async with make_nodes(heartbeat=heartbeat) as nodes, clients(ws_urls(nodes)) as peers:
        watcher = await peers.join("watcher")  # on the first node, the dead one on the last
        started = time.monotonic()
        dead = await dead_owner(peers, nodes[-1].port, "dead")
        assert await watcher.recv() == {"type": "peer-joined", "peerId": "dead"}
        # The watcher keeps reading (so it answers pings) and outlives several heartbeats.
        assert await watcher.recv(within=5) == {"type": "peer-left", "peerId": "dead"}
        assert time.monotonic() - started >= heartbeat * 1.5 * 0.9  # a ping, then half a beat
        assert sum(node.server.metrics.leaves["heartbeat"] for node in nodes) == 1
        await watcher.expect_silence(seconds(0.5))  # still connected across heartbeats
        newcomer = await peers.join("newcomer")
        assert newcomer.peers == ["watcher"]
        if isinstance(dead, RawClient):
            await dead.close()


@pytest.mark.parametrize("dead_owner", [silent_raw_owner, autoping_off_owner])
async def test_dead_owner_loses_its_id_to_a_rejoin_within_the_probe_timeout(
    make_nodes: NodesFactory, dead_owner: DeadOwner
) -> None:
    # A long heartbeat: only the probe can notice the dead owner this fast.
    async with (
        make_nodes(heartbeat=seconds(30), probe_timeout=seconds(0.3)) as nodes,
        clients(ws_urls(nodes)) as peers,
    ):
        watcher = await peers.join("watcher")
        dead = await dead_owner(peers, nodes[-1].port, "alice")
        assert await watcher.recv() == {"type": "peer-joined", "peerId": "alice"}

        started = time.monotonic()
        first = await peers.connect("alice", url=nodes[0].ws_url)  # the other node, if two
        await first.send(type="join", peerId="alice")
        await first.recv_error("id-taken")
        assert await first.expect_close() == 4409
        # The refused join made the server ping the owner; it did not answer.
        assert await watcher.recv() == {"type": "peer-left", "peerId": "alice"}
        assert sum(node.server.metrics.leaves["unresponsive"] for node in nodes) == 1
        retry = await peers.join("alice")  # the client's retry a moment later succeeds
        assert retry.peers == ["watcher"]
        assert time.monotonic() - started < seconds(5)
        assert await watcher.recv() == {"type": "peer-joined", "peerId": "alice"}
        assert (await watcher.roundtrip(retry, text="welcome back"))["text"] == "welcome back"
        if isinstance(dead, RawClient):
            await dead.close()


async def test_live_owner_answers_the_probe_and_keeps_its_id(make_nodes: NodesFactory) -> None:
    async with (
        make_nodes(heartbeat=seconds(30), probe_timeout=seconds(0.3)) as nodes,
        clients(ws_urls(nodes)) as peers,
    ):
        owner = await peers.join("alice")
        watcher = await peers.join("watcher")
        await owner.recv_type("peer-joined")
        for _ in range(2):
            imposter = await peers.connect("imposter")
            await imposter.send(type="join", peerId="alice")
            await imposter.recv_error("id-taken")
            assert await imposter.expect_close() == 4409
            # The owner is reading (aiohttp answers the probe's ping) well past the timeout.
            await owner.expect_silence(seconds(0.6))
        assert sum(node.server.metrics.leaves["unresponsive"] for node in nodes) == 0
        # Still the owner: messages reach it, and nobody saw it leave.
        assert (await watcher.roundtrip(owner, text="still you?"))["text"] == "still you?"
        await owner.send(type="fence")
        assert await watcher.recv() == {"type": "fence", "from": "alice"}


async def test_resume_with_token_takes_the_id_over_at_once(peers: Clients) -> None:
    old = await peers.join("alice")
    bob = await peers.join("bob")
    await old.recv_type("peer-joined")
    # The old socket is still open and healthy: the token alone decides.
    new = await peers.connect("alice")
    await new.send(type="join", peerId="alice", resumeToken=old.token)
    listing = await new.recv_type("peer-list")
    assert listing["peers"] == ["bob"]
    assert listing["resumeToken"] not in (None, old.token)
    # The others see the old connection leave, then the new one arrive.
    assert await bob.recv() == {"type": "peer-left", "peerId": "alice"}
    assert await bob.recv() == {"type": "peer-joined", "peerId": "alice"}
    assert await old.expect_close() == 4410
    # Messages for alice reach the new connection.
    assert (await bob.roundtrip(new, text="hi"))["from"] == "bob"
    # The old connection's close owed nobody a second peer-left.
    await new.send(type="fence")
    assert await bob.recv() == {"type": "fence", "from": "alice"}
    # The spent token cannot be used again; the new one can.
    again = await peers.connect("thief")
    await again.send(type="join", peerId="alice", resumeToken=old.token)
    await again.recv_error("bad-resume-token")
    assert await again.expect_close() == 4401
    newest = await peers.connect("alice")
    await newest.send(type="join", peerId="alice", resumeToken=listing["resumeToken"])
    assert (await newest.recv_type("peer-list"))["peers"] == ["bob"]
    assert await new.expect_close() == 4410
    assert await bob.recv() == {"type": "peer-left", "peerId": "alice"}
    assert await bob.recv() == {"type": "peer-joined", "peerId": "alice"}
    await newest.ws.close()
    assert await bob.recv() == {"type": "peer-left", "peerId": "alice"}
    await bob.expect_silence(0.1)


async def test_resume_replaces_a_dead_socket_without_waiting(make_server: ServerFactory) -> None:
    async with make_server(heartbeat=seconds(30)) as srv, clients(srv.ws_url) as peers:
        bob = await peers.join("bob")
        raw = await RawClient.connect(srv.port)
        token = (await raw.join("alice"))["resumeToken"]
        assert await bob.recv() == {"type": "peer-joined", "peerId": "alice"}
        started = time.monotonic()
        new = await peers.connect("alice")
        await new.send(type="join", peerId="alice", resumeToken=token)
        assert (await new.recv_type("peer-list"))["peers"] == ["bob"]
        assert time.monotonic() - started < seconds(FAST_LIMITS.probe_timeout)
        assert await bob.recv() == {"type": "peer-left", "peerId": "alice"}
        assert await bob.recv() == {"type": "peer-joined", "peerId": "alice"}
        await raw.close()
        assert (await bob.roundtrip(new))["from"] == "bob"
        assert srv.server.metrics.leaves["replaced"] == 1


async def test_stalled_client_is_dropped_and_costs_the_others_nothing(
    make_nodes: NodesFactory,
) -> None:
    limits: dict[str, Any] = {
        "max_frame_bytes": 64 * 1024,
        "send_queue": 8,
        "heartbeat": seconds(30),  # the queue, not the heartbeat, must catch it
        "rate": 10_000.0,
        "burst": 10_000,
        "byte_rate": 1e12,  # alice's 60 KB broadcasts must fill the stalled client's buffers
        "byte_burst": 10**12,
    }
    async with make_nodes(**limits) as nodes, clients(ws_urls(nodes)) as peers:
        alice, bob = await peers.join("alice"), await peers.join("bob")
        await alice.recv_type("peer-joined")
        stalled = await RawClient.connect(nodes[-1].port, rcvbuf=4096)  # with bob, if two
        await stalled.join("stalled")  # ... and never reads again
        assert await alice.recv() == {"type": "peer-joined", "peerId": "stalled"}
        assert await bob.recv() == {"type": "peer-joined", "peerId": "stalled"}

        pad = "x" * 60_000
        latencies: list[float] = []
        dropped_after = None
        for i in range(2000):
            sent = time.monotonic()
            await alice.send(type="chat", n=i, pad=pad)
            frame = await bob.recv()
            if frame["type"] == "peer-left":
                dropped_after = i
                assert frame == {"type": "peer-left", "peerId": "stalled"}
                assert (await bob.recv())["n"] == i
                break
            assert frame["n"] == i
            latencies.append(time.monotonic() - sent)
        assert dropped_after is not None, "the stalled client was never dropped"
        # Bounded: the kernel's socket buffers (a few MB here) plus send_queue frames, not
        # everything alice sent.
        assert dropped_after < 400, dropped_after
        assert await alice.recv() == {"type": "peer-left", "peerId": "stalled"}
        metrics = [node.server.metrics for node in nodes]
        assert sum(m.slow_clients_dropped_total for m in metrics) == 1
        assert sum(m.leaves["slow"] for m in metrics) == 1
        # Everyone else kept normal latency the whole time (no head-of-line blocking).
        latencies.sort()
        assert latencies[len(latencies) // 2] < seconds(0.2), latencies
        assert latencies[-1] < seconds(2), latencies
        # The dropped client's connection is gone, the others still talk.
        await stalled.wait_closed()
        assert (await bob.roundtrip(alice, text="ok"))["text"] == "ok"
        assert sum(len(node.server.connections) for node in nodes) == 2


async def test_dropped_tcp_without_close_frame_gives_peer_left(peers: Clients) -> None:
    alice = await peers.join("alice")
    bob = await peers.join("bob")
    await alice.recv_type("peer-joined")
    transport = bob.ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.abort()
    assert await alice.recv() == {"type": "peer-left", "peerId": "bob"}


async def test_graceful_shutdown_closes_1001_and_keeps_peer_left_semantics() -> None:
    names = ["a", "b", "c", "d"]
    got: dict[str, list[dict[str, Any]]] = {}
    codes: dict[str, int | None] = {}
    context = running_server()
    srv = await context.__aenter__()
    stopped = False
    try:
        async with clients(srv.ws_url) as peers:
            joined: dict[str, Peer] = {}
            for name in names:
                joined[name] = await peers.join(name)
            for i, name in enumerate(names):
                for _ in names[i + 1 :]:
                    await joined[name].recv_type("peer-joined")
            lurker = await peers.connect("lurker")  # connected, never joined
            # Keep reading while the server stops, as real clients do (they answer its close).
            draining = {n: asyncio.create_task(drain_until_close(p)) for n, p in joined.items()}
            lurking = asyncio.create_task(lurker.expect_close())
            stopped = True
            await context.__aexit__(None, None, None)  # what SIGINT/SIGTERM run
            for name, task in draining.items():
                got[name], codes[name] = await task
            assert await lurking == 1001
    finally:
        if not stopped:
            await context.__aexit__(None, None, None)
    assert codes == dict.fromkeys(names, 1001)
    seen = {(observer, f["peerId"]) for observer, frames in got.items() for f in frames}
    assert all(f["type"] == "peer-left" for frames in got.values() for f in frames)
    assert sum(len(frames) for frames in got.values()) == len(seen)  # no duplicates
    # Every pair: exactly one of the two saw the other leave (the one that stayed longer).
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            assert ((x, y) in seen) != ((y, x) in seen), (x, y, seen)
    assert srv.server.metrics.leaves["shutdown"] == len(names)
    assert sum(srv.server.metrics.leaves.values()) == len(names)
