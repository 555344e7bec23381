"""The real redis-server the shared-registry tests run against: started on a free port, empty,
reachable with redis-py's asyncio client, and able to go away and come back on that port."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.redis_server import RedisServer, ping, running_redis
from tests.support import seconds


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


def fail_fast(url: str) -> Redis:
    """A client that reports an outage at once (redis-py retries 3 times with backoff by
    default) and gives up connecting after a second."""
    return Redis.from_url(url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=seconds(1))


async def next_message(pubsub: PubSub) -> dict[str, Any]:
    """The next published message (confirmations skipped); TimeoutError after a second."""
    async with asyncio.timeout(seconds(1)):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None:
                return dict(message)


async def test_set_get_on_its_own_empty_server(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    async with Redis.from_url(redis_server.url, decode_responses=True) as client:
        # Ours, not the system service on 6379, and started with the options we asked for.
        assert await client.config_get("port") == {"port": str(redis_server.port)}
        assert await client.config_get("save") == {"save": ""}
        assert await client.config_get("appendonly") == {"appendonly": "no"}
        assert await client.config_get("bind") == {"bind": "127.0.0.1"}
        assert await client.dbsize() == 0
        assert await client.set("room:lobby", "node-a") is True
        assert await client.get("room:lobby") == "node-a"
        assert await client.get("room:missing") is None


async def test_publish_subscribe_round_trip(redis_server: RedisServer) -> None:
    async with Redis.from_url(redis_server.url) as client, client.pubsub() as pubsub:
        await pubsub.subscribe("rooms")
        # The subscription is registered once the server confirms it; only then publish.
        confirm = await pubsub.get_message(timeout=seconds(1))
        assert confirm is not None and confirm["type"] == "subscribe"
        assert await client.publish("rooms", b"hello from node-a") == 1
        message = await next_message(pubsub)
        assert message["type"] == "message"
        assert message["channel"] == b"rooms"
        assert message["data"] == b"hello from node-a"


async def test_two_servers_are_separate() -> None:
    with running_redis() as first, running_redis() as second:
        assert first.port != second.port
        assert first.url != second.url
        async with Redis.from_url(first.url) as a, Redis.from_url(second.url) as b:
            await a.set("only-in-first", b"1")
            assert await a.get("only-in-first") == b"1"
            assert await b.get("only-in-first") is None
            assert await b.dbsize() == 0


async def test_stop_is_an_outage_and_start_brings_it_back(redis_server: RedisServer) -> None:
    port = redis_server.port
    async with fail_fast(redis_server.url) as client:
        await client.set("room:lobby", b"node-a")
        redis_server.stop()
        assert not redis_server.running
        assert not ping(port)
        with pytest.raises(RedisConnectionError):
            await client.get("room:lobby")
        # Still down for a second try: the error was not a one-off of the dropped connection.
        with pytest.raises(RedisConnectionError):
            await client.ping()

        redis_server.start()
        assert redis_server.running
        assert redis_server.port == port
        assert await client.ping() is True
        # Back empty (nothing is persisted), and writable again.
        assert await client.get("room:lobby") is None
        await client.set("room:lobby", b"node-b")
        assert await client.get("room:lobby") == b"node-b"


def test_exit_terminates_it_even_when_restarted() -> None:
    with running_redis() as server:
        server.stop()
        server.start()
        proc = server.proc
        assert proc is not None and proc.poll() is None
        # One log over both runs, each of which came up.
        assert server.log().count("Ready to accept connections") == 2
        workdir = server.workdir
        assert workdir.is_dir()
    assert proc.poll() is not None
    assert not ping(server.port)
    assert not workdir.exists()


def test_missing_binary_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with (
        pytest.raises(RuntimeError, match=r"redis-server not found .*\./dev setup"),
        running_redis(),
    ):
        pass
