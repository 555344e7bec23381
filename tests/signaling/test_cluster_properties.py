"""The property test's random traffic (``test_properties``), across two nodes.

The same actions and the same model, but the clients alternate between two
``RedisRegistry`` nodes sharing rooms through a real redis-server: joins, resumes, the
duplicate-ID probe, routed and broadcast messages and leaves cross nodes. Delivery between
nodes takes a moment, so after each step the harness reads frames as they arrive (what
must hold at any time is checked on each frame) and waits until the state invariants hold,
failing if they do not within a few seconds (a ghost, a lost peer-left, a lost message).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings

from signaling.protocol import PeerId, RoomId
from signaling.redis_registry import RedisRegistry
from signaling.redis_rooms import room_keys
from tests.redis_server import running_redis
from tests.signaling.harness import LIMITS, Client, Harness, actions, step

#: How long the nodes have to agree after a step (they take milliseconds).
SETTLE = 5.0
_names = itertools.count()


class ClusterHarness(Harness):
    def __init__(
        self, nodes: list[RedisRegistry], redis: aioredis.Redis, settle: float = SETTLE
    ) -> None:
        super().__init__()
        self.nodes = nodes
        self.redis = redis
        self.settle = settle

    def registry_of(self, client: Client) -> RedisRegistry:
        return self.nodes[client.outbox.cid % len(self.nodes)]

    async def join(self, room: RoomId, join: Any, client: Client) -> Any:
        return await self.registry_of(client).join(room, join, client.outbox)

    async def leave(self, room: RoomId, peer: PeerId, client: Client) -> None:
        await self.registry_of(client).leave(room, peer, client.outbox)

    async def settled(self, condition: Callable[[], bool]) -> None:
        deadline = asyncio.get_running_loop().time() + self.settle
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "the nodes never agreed"
            await asyncio.sleep(0.005)

    async def check(self, joiner: Client | None) -> None:
        deadline = asyncio.get_running_loop().time() + self.settle
        while True:
            for client in self.clients:  # resumed (maybe on the other node): closed by the
                if client.outbox.replaced and not client.closed:  # adapter, as it would be
                    self.read_frames(joiner, [client])
                    await self.close(client)
            self.read_frames(joiner)
            members = await self.shared_members()
            rooms = {
                room for node in self.nodes for room, view in node._views.items() if view.local()
            }
            peers = sum(node.counts()[1] for node in self.nodes)
            try:
                self.check_state(members, (len(rooms), peers))
                return
            except AssertionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.005)

    async def shared_members(self) -> dict[str, list[tuple[str, object]]]:
        """Each room in Redis, in join order, with the connection some node holds it by."""
        out: dict[str, list[tuple[str, object]]] = {}
        for room in {k[0] for k in self.live()} | set(self.order):
            order = await self.redis.zrange(room_keys(RoomId(room))[1], 0, -1)
            out[room] = [(peer, self.connection(RoomId(room), PeerId(peer))) for peer in order]
        return out

    def connection(self, room: RoomId, peer: PeerId) -> object:
        for node in self.nodes:
            view = node._views.get(room)
            entry = view.members.get(peer) if view is not None else None
            if entry is not None and entry.conn is not None:
                return entry.conn
        return None  # in Redis, connected nowhere: a ghost (fails the check)

    def members(self) -> dict[str, list[tuple[str, object]]]:
        raise AssertionError("across nodes, membership is read from Redis (shared_members)")


async def play_across(url: str, script: list[tuple[Any, ...]]) -> ClusterHarness:
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    await redis.flushall()
    run = next(_names)
    nodes = [RedisRegistry(url, LIMITS.max_peers, node=f"p{run}n{i}") for i in range(2)]
    try:
        for node in nodes:
            await node.start()
        h = ClusterHarness(nodes, redis)
        await play_checked(h, script)
        return h
    finally:
        for node in nodes:
            await node.close()
        await redis.aclose()


async def play_checked(h: ClusterHarness, script: list[tuple[Any, ...]]) -> None:
    for action in script:
        await step(h, action)
    for client in list(h.clients):
        await h.close(client)
        await h.check(None)
    assert not any((await h.shared_members()).values()), "members left in Redis"


def test_random_traffic_across_two_nodes_keeps_every_invariant() -> None:
    with running_redis() as server:

        @settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(actions)
        def across(script: list[tuple[Any, ...]]) -> None:
            asyncio.run(play_across(server.url, script))

        across()


def test_the_cluster_harness_catches_a_lost_cross_node_message() -> None:
    """Not vacuous: a node that drops what it should publish for another node is caught."""
    with running_redis() as server:

        async def scenario() -> None:
            script = [
                ("join", 0, "a", None, "none"),  # cid 1: node 1
                ("join", 1, "b", None, "none"),  # cid 2: node 0
                ("send", 0, "chat", "b", "none"),
            ]
            redis = aioredis.Redis.from_url(server.url, decode_responses=True)
            await redis.flushall()
            nodes = [RedisRegistry(server.url, LIMITS.max_peers, node=f"lost{i}") for i in range(2)]
            for node in nodes:
                await node.start()
            nodes[1]._pipe.publish = lambda channel, text: None  # type: ignore[method-assign]
            try:
                h = ClusterHarness(nodes, redis, settle=1.0)
                await play_checked(h, script)
            finally:
                for node in nodes:
                    await node.close()
                await redis.aclose()

        try:
            asyncio.run(scenario())
        except AssertionError:
            return
        raise AssertionError("a lost cross-node message went unnoticed")
