"""Rooms shared by server nodes through Redis.

The pure part (node messages, each node's view of a room) without sockets; then what only
several nodes can get wrong, with two or three real servers and a real redis-server: a
race for one ID, per-sender order across nodes, and broadcasts reaching only the nodes
with members in the room. Many adapter tests of the signaling suite also run on two nodes
(conftest's ``nodes`` and ``make_nodes`` fixtures; docs/several-nodes.md says which).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from signaling.cluster import Envelope, Kind, RoomView, decode, encode, pack, room_channel, unpack
from signaling.protocol import PeerId, RoomId
from signaling.redis_pipe import Op, pack_publishes
from signaling.redis_registry import RECONNECT_DELAY, RedisRegistry
from signaling.redis_rooms import EMPTY_ROOM_TTL, JOIN, LEAVE, RESTORE, leave_args, room_keys
from signaling.server import ServerConfig
from tests.redis_server import RedisServer, running_redis
from tests.signaling.clients import Clients, Peer, clients
from tests.signaling.conftest import FAST_LIMITS, NODE_DEATH_NOTICED, cluster
from tests.support import eventually, running_server, seconds

names = st.text(st.characters(min_codepoint=33, max_codepoint=0x10FFFF), min_size=1, max_size=20)


@given(
    st.sampled_from(Kind),
    names,
    names,
    names,
    st.integers(0, 2**53),
    st.booleans(),
    st.text(max_size=200),
)
def test_node_messages_round_trip(
    kind: Kind, origin: str, room: str, peer: str, seq: int, replaced: bool, data: str
) -> None:
    envelope = Envelope(kind, origin, RoomId(room), PeerId(peer), origin, seq, replaced, data)
    assert decode(encode(envelope)) == envelope


envelopes = st.builds(
    Envelope,
    st.sampled_from(Kind),
    names,
    names.map(RoomId),
    names.map(PeerId),
    names,
    st.integers(0, 2**53),
    st.booleans(),
    st.text(max_size=60),
)


@given(st.lists(envelopes, min_size=1, max_size=6))
def test_packed_node_messages_round_trip_in_order(batch: list[Envelope]) -> None:
    assert unpack(pack([encode(e) for e in batch])) == batch


def test_a_writer_batch_packs_only_runs_to_one_channel() -> None:
    """Consecutive publishes to one channel become one; a script or another channel ends
    the run, so nothing changes order."""
    ops = [
        Op(channel="x", text=encode(Envelope(Kind.MESSAGE, "n", RoomId("r"), PeerId(str(i)))))
        for i in range(5)
    ]
    script = Op(script="return 1")
    other = Op(channel="y", text=ops[0].text)
    packed = pack_publishes([ops[0], ops[1], script, ops[2], other, ops[3], ops[4]])
    assert [op.script or op.channel for op in packed] == ["x", "return 1", "x", "y", "x"]
    assert [[e.peer for e in unpack(op.text)] for op in packed if not op.script] == [
        ["0", "1"], ["2"], ["0"], ["3", "4"],
    ]  # fmt: skip


def test_scripts_touch_only_their_rooms_keys() -> None:
    """Redis Cluster runs a script on the shard that holds its keys: each key a script
    reads or writes is one it declares, and a room's keys share one hash tag (one slot).
    (A one-shard cluster would not catch a stray key: Redis 7 lets a script reach any key
    of a slot the shard holds.)"""
    for script in (JOIN, LEAVE, RESTORE):
        calls = re.findall(r"redis\.call\('(\w+)', ([^,)]+)", script)
        assert calls
        for command, first in calls:
            if command != "PUBLISH":  # a channel, not a key
                assert first.startswith("KEYS["), (command, first)
    rooms = ["a room", "}", "{", "{}", "}{", "a}b", "{a}", "lobby{", "x" * 128]
    for room in rooms:
        keys = room_keys(RoomId(room))
        tags = {hash_tag(key) for key in keys}
        assert len(tags) == 1, (room, keys)  # one slot
        assert tags.isdisjoint(keys), (room, keys)  # a real tag, not the whole key
    assert len({key for room in rooms for key in room_keys(RoomId(room))}) == 3 * len(rooms)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes of ``key``: what lies between its first ``{`` and the next
    ``}``, unless that is empty or missing; else the whole key."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else key


def test_garbage_is_not_a_node_message() -> None:
    for bad in ("5:abc", "3:", "x:l\x1f", "12"):
        with pytest.raises(ValueError):
            unpack(bad)
    with pytest.raises(ValueError):
        decode("hello")
    with pytest.raises(ValueError):
        decode("x\x1fa\x1fb\x1fc\x1f\x1f1\x1f\x1f")  # no such kind


def test_each_member_learns_each_membership_once() -> None:
    view: RoomView[str] = RoomView()
    view.joined(PeerId("bob"), "b", 2)
    view.connect(PeerId("alice"), "a", 1, "alice-conn", {}, "t1")
    view.connect(
        PeerId("carol"), "a", 3, "carol-conn", {PeerId("alice"): 1, PeerId("bob"): 2}, "t3"
    )
    # bob's join reaches this node after carol's peer-list had him: only alice is told.
    assert view.to_tell_joined(PeerId("bob"), 2) == ["alice-conn"]
    assert view.to_tell_joined(PeerId("bob"), 2) == []
    assert view.to_tell_joined(PeerId("carol"), 3) == ["alice-conn"]
    # bob resumes elsewhere: his old membership ends, the new one begins.
    assert view.left(PeerId("bob"), 2) is not None
    assert sorted(view.to_tell_left(PeerId("bob"), 2)) == ["alice-conn", "carol-conn"]
    assert view.to_tell_left(PeerId("bob"), 2) == []
    view.joined(PeerId("bob"), "a", 4)
    assert sorted(view.to_tell_joined(PeerId("bob"), 4)) == ["alice-conn", "carol-conn"]
    # A late "left" of the old membership changes nothing.
    assert view.left(PeerId("bob"), 2) is None
    assert view.to_tell_left(PeerId("bob"), 2) == []
    assert view.remote_nodes("a") == set()


async def eventually_join(peers: Clients, name: str, room: str, within: float = 10.0) -> Peer:
    """Join once the cluster takes joins again (a refused attempt is closed, retried)."""
    deadline = time.monotonic() + seconds(within)
    while True:
        peer = await peers.connect(name)
        await peer.send(type="join", peerId=name, room=room)
        frame = await peer.recv()
        if frame["type"] == "peer-list":
            peer.peer_list, peer.peers = frame, frame["peers"]
            return peer
        assert frame.get("code") == "unavailable", frame
        assert time.monotonic() < deadline, "joins still refused after Redis came back"
        await asyncio.sleep(0.2)


@pytest.fixture
async def redis() -> AsyncIterator[RedisServer]:
    with running_redis() as server:
        yield server


async def test_two_nodes_racing_for_one_id_admit_one(redis: RedisServer) -> None:
    async with AsyncExitStack() as stack:
        a, b = await cluster(stack, redis.url, 2)
        for round_ in range(10):
            peers = await stack.enter_async_context(clients([a.ws_url, b.ws_url]))
            one, two = await peers.connect("x"), await peers.connect("x")
            room = f"race-{round_}"
            await asyncio.gather(
                one.send(type="join", peerId="same", room=room),
                two.send(type="join", peerId="same", room=room),
            )
            first, second = await one.recv(), await two.recv()
            kinds = sorted([first["type"], second["type"]])
            assert kinds == ["error", "peer-list"], (first, second)
            error = first if first["type"] == "error" else second
            assert error["code"] == "id-taken"


async def test_order_from_one_sender_holds_across_nodes(redis: RedisServer) -> None:
    """300 frames from alice (node 0) to bob (node 1), targeted and broadcast mixed: bob
    gets all of them, in the order sent."""
    async with AsyncExitStack() as stack:
        a, b = await cluster(stack, redis.url, 2)
        peers: Clients = await stack.enter_async_context(clients([a.ws_url, b.ws_url]))
        alice, bob = await peers.join("alice"), await peers.join("bob")
        await alice.recv_type("peer-joined")
        for n in range(300):
            if n % 3:
                await alice.send(type="chat", to="bob", n=n)
            else:
                await alice.send(type="chat", n=n)
        got = [(await bob.recv())["n"] for _ in range(300)]
        assert got == list(range(300))


async def test_broadcasts_reach_only_nodes_with_members(redis: RedisServer) -> None:
    async with AsyncExitStack() as stack:
        a, b, c = await cluster(stack, redis.url, 3)
        peers: Clients = await stack.enter_async_context(clients([a.ws_url, b.ws_url]))
        alice, bob = await peers.join("alice", "r1"), await peers.join("bob", "r1")
        await alice.recv_type("peer-joined")
        client = aioredis.Redis.from_url(redis.url, decode_responses=True)
        try:
            # The room's channel has the two nodes with members as subscribers, not the third.
            subscribers = dict(await client.pubsub_numsub(room_channel(RoomId("r1"))))
            assert subscribers[room_channel(RoomId("r1"))] == 2
            await alice.send(type="chat", text="hi")
            assert (await bob.recv())["text"] == "hi"
            await bob.ws.close()
            await alice.recv_type("peer-left")

            async def node_1_let_go() -> bool:
                subscribers = dict(await client.pubsub_numsub(room_channel(RoomId("r1"))))
                return bool(subscribers[room_channel(RoomId("r1"))] == 1)

            await eventually(node_1_let_go, seconds(5), "the node without members to unsubscribe")
        finally:
            await client.aclose()
        # The node without members never heard of the room; the one with bob did.
        with_bob, without = b.server.registry.cluster_stats(), c.server.registry.cluster_stats()
        assert without is not None and without.received == 0, without
        assert with_bob is not None and with_bob.received > 0, with_bob


async def test_the_members_of_a_node_that_dies_are_announced_left(redis: RedisServer) -> None:
    """Node n2 stops without a word (its registry's tasks and Redis connections gone, as
    in a SIGKILL): within 10 s the others get ``peer-left`` for its member, and a newcomer's
    ``peer-list`` no longer has it."""
    async with AsyncExitStack() as stack:
        a, b, c = await cluster(stack, redis.url, 3)
        peers: Clients = await stack.enter_async_context(clients([a.ws_url, b.ws_url, c.ws_url]))
        alice, bob, _carol = (
            await peers.join("alice"),
            await peers.join("bob"),
            await peers.join("carol"),
        )
        for _ in range(2):
            await alice.recv_type("peer-joined")
        await bob.recv_type("peer-joined")
        dead = c.server.registry
        assert isinstance(dead, RedisRegistry)
        for task in dead._tasks:  # the crash: no more heartbeats, no leaves
            task.cancel()
        killed = time.monotonic()
        # Both read at once: a client that does not read does not answer the heartbeat.
        got = await asyncio.gather(*(p.recv(within=seconds(12)) for p in (alice, bob)))
        noticed = time.monotonic() - killed
        assert got == [{"type": "peer-left", "peerId": "carol"}] * 2
        print(f"\nnode death announced after {noticed:.1f} s")
        assert noticed <= NODE_DEATH_NOTICED, noticed
        newcomer = await peers.join("dave")  # on node 0 again
        assert newcomer.peers == ["alice", "bob"]


async def test_a_node_shutting_down_hands_its_members_over(redis: RedisServer) -> None:
    """A node stopping gracefully closes its clients with 1001 and holds their memberships
    for ``handover`` s: one that resumes on another node with its token is a resume for the
    others (peer-left, peer-joined at once); one asked for without a token leaves at once,
    so that join succeeds on a retry; one that never comes back leaves at the end."""
    async with AsyncExitStack() as stack:
        handover = seconds(8)  # long: what must happen at once clearly comes before its end
        a, b = await cluster(stack, redis.url, 2, handover, heartbeat=seconds(30))
        peers: Clients = await stack.enter_async_context(clients([a.ws_url, b.ws_url]))
        bob = await peers.join("bob", url=b.ws_url)
        on_a = [await peers.join(name, url=a.ws_url) for name in ("resumer", "plain", "quitter")]
        for _ in on_a:
            await bob.recv_type("peer-joined")
        resumer = on_a[0]
        stopping = asyncio.create_task(a.runner.cleanup())
        # Stopped before the stack stops it again, even when an assertion fails.
        stack.push_async_callback(asyncio.wait_for, stopping, seconds(15))
        started = time.monotonic()
        for client in on_a:
            assert await client.expect_close() == 1001
        await bob.expect_silence(0.3)  # nobody announced left yet
        again = await peers.connect("resumer again", url=b.ws_url)
        await again.send(type="join", peerId="resumer", resumeToken=resumer.token)
        assert (await again.recv_type("peer-list"))["peers"] == ["bob", "plain", "quitter"]
        assert [await bob.recv() for _ in range(2)] == [
            {"type": "peer-left", "peerId": "resumer"},
            {"type": "peer-joined", "peerId": "resumer"},
        ]
        tokenless = await peers.connect("plain again", url=b.ws_url)
        await tokenless.send(type="join", peerId="plain")
        assert (await tokenless.recv_type("error"))["code"] == "id-taken"
        assert await bob.recv() == {"type": "peer-left", "peerId": "plain"}
        assert time.monotonic() - started < handover  # at once, not at the end
        retry = await peers.join("plain", url=b.ws_url)
        assert retry.peers == ["bob", "quitter", "resumer"]
        assert await bob.recv() == {"type": "peer-joined", "peerId": "plain"}
        left = await bob.recv(within=handover + seconds(5))
        assert left == {"type": "peer-left", "peerId": "quitter"}
        await stopping
        assert time.monotonic() - started < handover + seconds(5)


async def test_while_redis_is_down_joins_are_refused_and_nothing_breaks(
    redis: RedisServer,
) -> None:
    """Redis stops: a join is refused with ``unavailable`` and close 1013 (try again
    later), members on one node still reach each other, no node's tasks die. Redis comes
    back (empty): joins work again, members on different nodes reach each other again
    (the nodes subscribe again), and the nodes restore their members into it. Heartbeats
    are slowed: the clients here read only now and then."""
    async with AsyncExitStack() as stack:
        a, b = await cluster(stack, redis.url, 2, heartbeat=seconds(60))
        both: Clients = await stack.enter_async_context(clients([a.ws_url, b.ws_url]))
        only_a: Clients = await stack.enter_async_context(clients(a.ws_url))
        alice, bob = await both.join("alice"), await both.join("bob")
        await alice.recv_type("peer-joined")
        amy = await only_a.join("amy")  # alice's node too
        await asyncio.gather(alice.recv_type("peer-joined"), bob.recv_type("peer-joined"))

        redis.stop()
        late = await only_a.connect("late")
        await late.send(type="join", peerId="late")
        error = await late.recv_error("unavailable")
        assert "try again" in error["message"]
        assert await late.expect_close() == 1013
        await alice.send(type="chat", to="amy", n=1)  # same node: no Redis needed
        assert (await amy.recv())["n"] == 1
        for node in (a, b):
            registry = node.server.registry
            assert isinstance(registry, RedisRegistry)
            assert not any(task.done() for task in registry._tasks)

        redis.start()
        await asyncio.sleep(RECONNECT_DELAY * 4)
        again = await eventually_join(both, "again", room="other")
        assert again.peers == []
        await alice.send(type="chat", to="bob", n=2)  # node a to node b
        assert (await bob.recv())["n"] == 2
        await bob.send(type="chat", n=3)  # a broadcast from node b
        assert [(await p.recv())["n"] for p in (alice, amy)] == [3, 3]
        # Redis came back empty: each node put its members back, as they were. A newcomer
        # sees all three, in join order; the others hear of nobody but the newcomer.
        newcomer = await eventually_join(both, "newcomer", room="default")
        assert newcomer.peers == ["alice", "bob", "amy"]
        for peer in (alice, bob, amy):
            assert await peer.recv() == {"type": "peer-joined", "peerId": "newcomer"}


async def test_rooms_named_with_braces_work_across_nodes_and_expire_once_empty(
    redis: RedisServer,
) -> None:
    """Rooms whose names hold ``{`` and ``}`` are rooms like any other across two nodes,
    each with its keys under one hash tag of its own; once a room empties, its member and
    order keys are gone and its join counter lives EMPTY_ROOM_TTL more: minutes, not a day."""
    assert EMPTY_ROOM_TTL <= 30 * 60
    rooms = ["}", "{", "a}{b", "{a}"]
    async with AsyncExitStack() as stack:
        a, b = await cluster(stack, redis.url, 2)
        client = aioredis.Redis.from_url(redis.url, decode_responses=True)
        stack.push_async_callback(client.aclose)
        peers: Clients = await stack.enter_async_context(clients([a.ws_url, b.ws_url]))
        for room in rooms:
            alice, bob = await peers.join("alice", room), await peers.join("bob", room)
            assert (alice.peers, bob.peers) == ([], ["alice"])  # nobody of another room
            await alice.recv_type("peer-joined")
            assert (await alice.roundtrip(bob, text=room))["text"] == room  # node a to b
            assert (await bob.roundtrip(alice, text=room))["text"] == room  # b to a
            await bob.send(type="chat", text="all")
            assert (await alice.recv())["text"] == "all"
            await alice.ws.close()
            await bob.recv_type("peer-left")
            await bob.ws.close()
        stored = set(await client.keys("mp:*"))
        tags = set()
        for room in rooms:
            members, order, counter = room_keys(RoomId(room))
            deadline = time.monotonic() + seconds(5)
            while await client.exists(members, order):  # bob's leave is on its way
                assert time.monotonic() < deadline, f"room {room!r} still has members"
                await asyncio.sleep(0.05)
            assert counter in stored
            assert 0 < await client.ttl(counter) <= EMPTY_ROOM_TTL
            tags.add(hash_tag(counter))
        assert len(tags) == len(rooms)


async def test_a_late_leave_never_ends_a_newer_membership(redis: RedisServer) -> None:
    """A leave sent late (kept while Redis was unreachable, sent once it answers) after its
    room emptied and the room's join counter expired: the peer's new membership has the
    same sequence number again, but not the same token, and stays."""
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    room, alice = RoomId("late"), PeerId("alice")
    keys = room_keys(room)

    async def join(token: str) -> list[str]:
        args: list[str | int] = [alice, "n0", token, "", 4, room_channel(room), "n0", room]
        result: list[str] = await client.eval(JOIN, len(keys), *keys, *args)
        return result

    try:
        assert (await join("first"))[:2] == ["ok", "1"]
        late = leave_args(room, alice, 1, "first", "left")
        assert await client.eval(LEAVE, len(keys), *keys, *late) == 0
        await client.delete(keys[2])  # the counter expired
        assert (await join("second"))[:2] == ["ok", "1"]
        assert await client.eval(LEAVE, len(keys), *keys, *late) == -1  # the late one
        assert await client.hexists(keys[0], alice)
    finally:
        await client.aclose()


async def test_the_queue_to_redis_is_bounded_by_bytes_too(redis: RedisServer) -> None:
    """Broadcasts of 16 KB queued for Redis faster than it takes them (here: all at once,
    the writer never gets a turn) fill a 128 KiB queue after 8, far below its count bound:
    like a full count, the rest are dropped (counted) and the node carries on. What was
    queued arrives, in order; once it has drained, broadcasts cross again."""
    queue_bytes = 128 * 1024
    async with AsyncExitStack() as stack:
        registries = [
            RedisRegistry(redis.url, FAST_LIMITS.max_peers, f"n{i}", queue_bytes=queue_bytes)
            for i in range(2)
        ]
        config = ServerConfig(limits=FAST_LIMITS)
        a, b = [
            await stack.enter_async_context(running_server(config, registry))
            for registry in registries
        ]
        peers: Clients = await stack.enter_async_context(clients([a.ws_url, b.ws_url]))
        alice, bob = await peers.join("alice"), await peers.join("bob")
        await alice.recv_type("peer-joined")
        node = registries[0]
        published, dropped = node.published, node.dropped
        pad = "x" * 16_000
        for n in range(40):
            frame = json.dumps({"type": "chat", "n": n, "pad": pad, "from": "alice"})
            node.broadcast(RoomId("default"), PeerId("alice"), frame)
        sent = node.published - published
        assert 1 <= sent <= queue_bytes // 16_000, sent
        assert node.dropped - dropped == 40 - sent
        assert [(await bob.recv())["n"] for _ in range(sent)] == list(range(sent))
        await alice.send(type="chat", n="after")
        assert (await bob.recv())["n"] == "after"
