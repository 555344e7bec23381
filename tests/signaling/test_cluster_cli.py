"""``meshpeer serve --redis-url``: real server processes sharing rooms through a real
redis-server; one is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.redis_server import RedisServer, running_redis
from tests.signaling.clients import clients
from tests.signaling.conftest import NODE_DEATH_NOTICED
from tests.support import REPO, free_port, seconds

pytestmark = pytest.mark.slow


def health(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        body: dict[str, object] = json.load(response)
        return body


@contextmanager
def node(
    redis: RedisServer, name: str, *extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m signaling --redis-url ... --node-id name`` on a free port, once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "signaling", "--port", str(port), "--redis-url", redis.url,
         "--node-id", name, "--log-level", "WARNING", *extra],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + seconds(20)
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                health(port)
                break
            except OSError:
                assert time.monotonic() < deadline, f"node {name} never answered"
                time.sleep(0.1)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=seconds(20))
            except subprocess.TimeoutExpired:
                proc.kill()
                stderr = proc.communicate()[1]
                raise AssertionError(
                    f"node {name} did not stop within 20 s of SIGTERM: {stderr.decode()[-3000:]}"
                ) from None


def test_healthz_shows_the_node_and_redis() -> None:
    with running_redis() as redis, node(redis, "alpha") as (_, port):
        shown = health(port)
        assert shown["status"] == "ok"
        assert isinstance(shown["redis"], dict)
        assert shown["redis"]["state"] == "ok" and shown["redis"]["node"] == "alpha"
        assert 0 < shown["redis"]["rtt_ms"] < 1000


def test_a_node_that_cannot_reach_redis_says_so_and_exits() -> None:
    port = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    proc = subprocess.run(
        [sys.executable, "-m", "signaling", "--port", str(port), "--redis-url", dead],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"cannot reach Redis at {dead}" in proc.stderr


async def test_a_killed_node_s_peers_are_announced_left_and_never_listed() -> None:
    with (
        running_redis() as redis,
        node(redis, "one") as (_, one),
        node(redis, "two") as (two_proc, two),
    ):
        async with clients([f"ws://127.0.0.1:{p}/ws" for p in (one, two)]) as peers:
            alice = await peers.join("alice")  # node one
            await peers.join("bob")  # node two
            await alice.recv_type("peer-joined")
            os.kill(two_proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            assert await alice.recv(within=seconds(15)) == {"type": "peer-left", "peerId": "bob"}
            noticed = time.monotonic() - killed
            print(f"\nSIGKILLed node's peer announced left after {noticed:.1f} s")
            assert noticed <= NODE_DEATH_NOTICED, noticed
            carol = await peers.join("carol")  # node one again
            assert carol.peers == ["alice"]
