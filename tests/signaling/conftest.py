from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import pytest

from signaling.redis_liveness import HEARTBEAT, NODE_TTL, SWEEP_EVERY
from signaling.redis_registry import RedisRegistry
from signaling.server import ServerConfig
from signaling.session import Limits
from tests.redis_server import running_redis
from tests.signaling.clients import Clients, clients
from tests.support import RunningServer, running_server, seconds

#: Small limits and short timers so every adapter test runs in well under a second.
FAST_LIMITS = Limits(
    max_frame_bytes=4096,
    max_peers=4,
    join_timeout=seconds(2),
    heartbeat=seconds(1),
    probe_timeout=seconds(0.5),
    rate=1000.0,
    burst=1000,
    send_queue=64,
)

#: A node's death is announced by then (s after it stopped): its liveness key lives NODE_TTL
#: after its last beat, a survivor sweeps every SWEEP_EVERY on its HEARTBEAT tick (8 s in
#: all; measured 6.5-7.0 s), plus the scaled time a busy machine takes to tell the clients.
NODE_DEATH_NOTICED = NODE_TTL + SWEEP_EVERY + HEARTBEAT + seconds(2.0)

ServerFactory = Callable[..., AbstractAsyncContextManager[RunningServer]]
NodesFactory = Callable[..., AbstractAsyncContextManager[list[RunningServer]]]
#: How a test's servers are set up: one in memory, or two nodes sharing rooms through Redis.
NODE_KINDS = ["1-node", "2-nodes"]


def ws_urls(nodes: list[RunningServer]) -> list[str]:
    """Where clients of ``nodes`` connect (``clients(ws_urls(nodes))`` alternates)."""
    return [node.ws_url for node in nodes]


@pytest.fixture
def make_server() -> ServerFactory:
    """``async with make_server(max_peers=2) as srv``: a server with FAST_LIMITS changed."""

    def factory(**changes: Any) -> AbstractAsyncContextManager[RunningServer]:
        return running_server(ServerConfig(limits=replace(FAST_LIMITS, **changes)))

    return factory


async def cluster(
    stack: AsyncExitStack, redis_url: str, count: int, handover: float = 3.0, **changes: Any
) -> list[RunningServer]:
    """``count`` servers (nodes ``n0``, ``n1``...) sharing rooms through Redis at
    ``redis_url``, closed by ``stack``; ``changes`` to FAST_LIMITS."""
    config = ServerConfig(limits=replace(FAST_LIMITS, **changes), handover=handover)
    servers = []
    for index in range(count):  # each server starts and closes its registry
        registry = RedisRegistry(redis_url, config.limits.max_peers, node=f"n{index}")
        servers.append(await stack.enter_async_context(running_server(config, registry)))
    return servers


@asynccontextmanager
async def open_nodes(kind: str, **changes: Any) -> AsyncIterator[list[RunningServer]]:
    """The servers of a ``kind`` in NODE_KINDS, with FAST_LIMITS changed by ``changes``."""
    if kind == "1-node":
        config = ServerConfig(limits=replace(FAST_LIMITS, **changes))
        async with running_server(config) as running:
            yield [running]
        return
    with running_redis() as redis:
        async with AsyncExitStack() as stack:
            yield await cluster(stack, redis.url, 2, **changes)


@pytest.fixture(params=NODE_KINDS)
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[list[RunningServer]]:
    """The servers the clients of a test use: one in memory, or two nodes sharing rooms
    through a real redis-server (clients alternate between them)."""
    async with open_nodes(request.param) as opened:
        yield opened


@pytest.fixture(params=NODE_KINDS)
def make_nodes(request: pytest.FixtureRequest) -> NodesFactory:
    """``async with make_nodes(max_peers=2) as nodes``: ``make_server``'s changed limits,
    on one server and again on two nodes (clients connect to ``ws_urls(nodes)``; counters
    are per node: add them up)."""
    return partial(open_nodes, request.param)


@pytest.fixture
async def fast_server(nodes: list[RunningServer]) -> RunningServer:
    return nodes[0]


@pytest.fixture
async def peers(nodes: list[RunningServer]) -> AsyncIterator[Clients]:
    async with clients([node.ws_url for node in nodes]) as opened:
        yield opened
