"""The agent's STUN/TURN checks against a real coturn, from a client namespace: live, refused
and silent servers each get the verdict the agent acts on, within the check's limit."""

from __future__ import annotations

import asyncio
import time

import pytest

from peer.ice_probe import Verdict, probe
from signaling.ice import IceServer
from tests.net.coturn import running_coturn
from tests.net.topology import call_in, netns_available, topology

pytestmark = pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))


def probe_from(ns: str, server: IceServer, limit: float = 2.0) -> tuple[Verdict, str, float]:
    """``probe(server)`` run in namespace ``ns``: verdict, detail, seconds taken."""

    async def timed() -> tuple[Verdict, str, float]:
        started = time.monotonic()
        verdict, detail = await probe(server, limit)
        return verdict, detail, time.monotonic() - started

    return call_in(ns, lambda: asyncio.run(timed()))


def test_turn_and_stun_checks_tell_live_refused_and_silent_servers_apart() -> None:
    with topology(clients=1) as topo, running_coturn(topo) as turn:
        ns = topo.clients[0].ns
        user, password = turn.credentials("alice")
        for transport in ("udp", "tcp"):
            live = IceServer(turn.url(transport), user, password)
            verdict, detail, took = probe_from(ns, live)
            assert verdict is Verdict.OK, (transport, detail, turn.log()[-2000:])
            assert took < 1.0
            wrong = IceServer(turn.url(transport), user, "bm90IHRoZSBwYXNzd29yZA==")
            verdict, detail, took = probe_from(ns, wrong)
            assert verdict is Verdict.REFUSED and "refused our credentials (401" in detail
            assert took < 1.0
        expired = IceServer(turn.url("udp"), *turn.credentials("alice", ttl=-60))
        assert probe_from(ns, expired)[0] is Verdict.REFUSED
        stun_url = turn.url("udp").replace("turn:", "stun:").split("?")[0]
        assert probe_from(ns, IceServer(stun_url))[0] is Verdict.OK
        for url in (f"turn:{topo.dead_addr}:3478", f"stun:{topo.dead_addr}:3478"):
            verdict, detail, took = probe_from(ns, IceServer(url, user, password), limit=0.5)
            assert verdict is Verdict.DEAD and "no answer within 0.5 s" in detail
            assert 0.45 < took < 1.5
