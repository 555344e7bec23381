"""The adapter depends on the Registry interface only, so another registry (Redis) can
replace LocalRegistry: a registry that offers nothing but the interface still serves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from aiohttp import web

from signaling.ice import IceServer
from signaling.protocol import Join, PeerId, RoomId
from signaling.registry import LocalRegistry, Outbox, Registry
from signaling.rooms import Accepted, Refused
from signaling.server import ServerConfig, SignalingServer
from tests.signaling.clients import clients
from tests.signaling.conftest import FAST_LIMITS
from tests.support import seconds


class InterfaceOnly:
    """Exactly the Registry calls, delegated; no ``table`` or anything else to reach into."""

    __slots__ = ("_inner", "calls")

    def __init__(self) -> None:
        self._inner = LocalRegistry(FAST_LIMITS.max_peers)
        self.calls: Counter[str] = Counter()

    async def start(self) -> None:
        self.calls["start"] += 1

    async def close(self) -> None:
        self.calls["close"] += 1

    def cluster_stats(self) -> None:
        return None

    async def join(
        self, room: RoomId, join: Join, outbox: Outbox, ice_servers: Sequence[IceServer] = ()
    ) -> Accepted[Outbox] | Refused[Outbox]:
        self.calls["join"] += 1
        return await self._inner.join(room, join, outbox, ice_servers)

    async def leave(self, room: RoomId, peer: PeerId, outbox: Outbox) -> None:
        self.calls["leave"] += 1
        await self._inner.leave(room, peer, outbox)

    def send(self, room: RoomId, to: PeerId, data: str) -> bool:
        self.calls["send"] += 1
        return self._inner.send(room, to, data)

    def broadcast(self, room: RoomId, sender: PeerId, data: str) -> None:
        self.calls["broadcast"] += 1
        self._inner.broadcast(room, sender, data)

    def others(self, room: RoomId) -> int:
        self.calls["others"] += 1
        return self._inner.others(room)

    def counts(self) -> tuple[int, int]:
        self.calls["counts"] += 1
        return self._inner.counts()


async def test_server_runs_on_any_registry_implementation() -> None:
    registry = InterfaceOnly()
    typed: Registry = registry  # mypy-checked: it satisfies the protocol
    server = SignalingServer(ServerConfig(limits=FAST_LIMITS), registry=typed)
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=seconds(2))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with clients(f"ws://127.0.0.1:{port}/ws") as peers:
            alice, bob = await peers.join("alice"), await peers.join("bob")
            await alice.recv_type("peer-joined")
            assert (await alice.roundtrip(bob))["from"] == "alice"
            await bob.send(type="chat")
            await alice.recv_type("chat")
            thief = await peers.connect("thief")
            await thief.send(type="join", peerId="alice")
            await thief.recv_error("id-taken")
            resumed = await peers.connect("alice")
            await resumed.send(type="join", peerId="alice", resumeToken=alice.token)
            assert (await resumed.recv_type("peer-list"))["peers"] == ["bob"]
            assert await bob.recv() == {"type": "peer-left", "peerId": "alice"}
            assert await bob.recv() == {"type": "peer-joined", "peerId": "alice"}
            assert await alice.expect_close() == 4410
    finally:
        await runner.cleanup()
    assert registry.calls["join"] == 4
    assert registry.calls["send"] == 1
    assert registry.calls["broadcast"] == 1
    assert registry.calls["leave"] >= 2
    assert registry.calls["start"] == registry.calls["close"] == 1  # the app's lifecycle
    assert registry.counts() == (0, 0)
