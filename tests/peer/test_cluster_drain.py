"""A server node shut down for an upgrade, behind a load balancer: its peers move to the
other node and their media keeps flowing.

Two nodes sharing rooms through a real redis-server, behind a round-robin load balancer
(nftables, no sticky sessions); two agents with media, one on each node. The node holding
one of them shuts down gracefully (as on SIGTERM): that agent reconnects through the
balancer, lands on the surviving node and is back in the room, and neither side's
connection is replaced: the picture does not stop.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import pytest

from signaling.protocol import PeerId, RoomId
from signaling.redis_registry import RedisRegistry
from signaling.server import ServerConfig
from tests.net.balancer import balancer_unavailable, load_balancer
from tests.peer.helpers import FrameTimes, agents, frames_from
from tests.redis_server import running_redis
from tests.support import RunningServer, eventually, running_server, seconds

pytestmark = pytest.mark.slow

#: The longest time bob goes without a frame of alice across the handover, s. At 15 fps a
#: frame comes every 0.07 s; a replaced connection (offer, answer, ICE, DTLS, a keyframe)
#: costs several times this. Scaled: a busy machine delays frames, not the handover.
MAX_GAP = 0.5


def holder(nodes: list[RunningServer], peer: str) -> RunningServer:
    (found,) = [
        node
        for node in nodes
        if any(
            (entry := view.members.get(PeerId(peer))) is not None and entry.conn is not None
            for room, view in node.server.registry._views.items()  # type: ignore[attr-defined]
            if room == RoomId("test")
        )
    ]
    return found


async def test_a_node_shut_down_hands_its_peers_over_without_stopping_media() -> None:
    why_not = balancer_unavailable()
    if why_not is not None:
        pytest.fail(f"this test needs a load balancer: {why_not}")
    with running_redis() as redis:
        async with AsyncExitStack() as stack:
            nodes = []
            for name in ("n0", "n1"):
                registry = RedisRegistry(redis.url, 32, node=name)
                nodes.append(
                    await stack.enter_async_context(running_server(ServerConfig(), registry))
                )
            port = stack.enter_context(load_balancer([node.port for node in nodes]))
            url = f"ws://127.0.0.1:{port}/ws"
            times = FrameTimes()
            async with (
                agents(url, ["alice"]) as (alice,),
                agents(url, ["bob"], consumers=[times]) as (bob,),
            ):
                await eventually(
                    lambda: frames_from(alice, "bob") > 10 and frames_from(bob, "alice") > 10,
                    seconds(15),
                    "media both ways",
                )
                going = holder(nodes, "alice")
                assert holder(nodes, "bob") is not going, "the balancer put both on one node"
                links = (alice.links[PeerId("bob")], bob.links[PeerId("alice")])
                stopped_at = time.monotonic()
                await going.runner.cleanup()  # graceful: 1001 to its clients
                survivor = nodes[1 - nodes.index(going)]
                await eventually(
                    lambda: alice.signaling_connected and PeerId("bob") in alice.members,
                    seconds(10),
                    "alice back in the room",
                )
                assert holder([survivor], "alice") is survivor
                await asyncio.sleep(seconds(1.5))
                assert (alice.links[PeerId("bob")], bob.links[PeerId("alice")]) == links, (
                    "a connection was replaced"
                )
                gap = times.max_gap("alice", stopped_at - 0.5, time.monotonic())
                assert gap < seconds(MAX_GAP), f"bob's picture of alice froze for {gap:.2f} s"
