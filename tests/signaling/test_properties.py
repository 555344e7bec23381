"""Property tests of the pure core: random traffic from many clients, checked against a model.

Session + LocalRegistry (over RoomTable) are driven exactly as the aiohttp adapter drives
them, without sockets or an event loop: each client's outbox records what it is sent, and
LocalRegistry's coroutines never suspend, so they are run to completion by hand.

Every client keeps a *view* of its room built only from what it received (peer-list, then
peer-joined/peer-left). The invariants checked after every step:
- a peer-list never contains the joiner and lists the room in join order;
- the registry's membership equals the set of live joined connections;
- every live client's view equals its room's membership (so each departure reached every
  peer present exactly once: a missing peer-left leaves a stale view, a second one names a
  peer no longer in it);
- a relayed message reaches exactly its addressee, or everyone else in the sender's room,
  with the sender's ``from``, and nothing reaches a closed connection or another room.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings

from signaling.protocol import PeerId, RoomId
from signaling.registry import LocalRegistry
from tests.signaling.harness import LIMITS, Harness, actions, step


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_random_traffic_keeps_every_invariant(script: list[tuple[Any, ...]]) -> None:
    asyncio.run(play(Harness(), script))


async def play(h: Harness, script: list[tuple[Any, ...]]) -> None:
    """Run ``script``, then everyone leaves: every view empties exactly, the rooms too."""
    for action in script:
        await step(h, action)
    for client in list(h.clients):
        await h.close(client)
        await h.check(None)
    assert not any(h.members().values())


def test_the_harness_catches_a_missing_peer_left() -> None:
    """The model is not vacuous: a registry that forgets one peer-left is caught."""

    class Forgetful(LocalRegistry):
        async def leave(self, room: RoomId, peer: PeerId, outbox: Any) -> None:
            self.table.leave(room, peer, outbox)  # no peer-left to anyone

    h = Harness()
    h.registry = Forgetful(LIMITS.max_peers)
    asyncio.run(step(h, ("join", 0, "a", None, "none")))
    asyncio.run(step(h, ("join", 1, "b", None, "none")))
    try:
        asyncio.run(step(h, ("close", 1)))
    except AssertionError:
        return
    raise AssertionError("a missing peer-left went unnoticed")


def test_the_harness_catches_a_misrouted_message() -> None:
    class Leaky(LocalRegistry):
        def send(self, room: RoomId, to: PeerId, data: str) -> bool:
            self.broadcast(room, PeerId(""), data)  # to everyone, sender included
            return True

    h = Harness()
    h.registry = Leaky(LIMITS.max_peers)
    asyncio.run(step(h, ("join", 0, "a", None, "none")))
    asyncio.run(step(h, ("join", 1, "b", None, "none")))
    asyncio.run(step(h, ("join", 2, "c", None, "none")))
    try:
        asyncio.run(step(h, ("send", 0, "chat", "b", "none")))
    except AssertionError:
        return
    raise AssertionError("a misrouted message went unnoticed")
