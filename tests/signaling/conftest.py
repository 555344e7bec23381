from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any

import pytest

from signaling.server import ServerConfig
from signaling.session import Limits
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

ServerFactory = Callable[..., AbstractAsyncContextManager[RunningServer]]


@pytest.fixture
def make_server() -> ServerFactory:
    """``async with make_server(max_peers=2) as srv``: a server with FAST_LIMITS changed."""

    def factory(**changes: Any) -> AbstractAsyncContextManager[RunningServer]:
        return running_server(ServerConfig(limits=replace(FAST_LIMITS, **changes)))

    return factory


@pytest.fixture
async def fast_server() -> AsyncIterator[RunningServer]:
    async with running_server(ServerConfig(limits=FAST_LIMITS)) as running:
        yield running


@pytest.fixture
async def peers(fast_server: RunningServer) -> AsyncIterator[Clients]:
    async with clients(fast_server.ws_url) as opened:
        yield opened
