"""The agent's STUN/TURN checks against a real coturn, from a client namespace: live, refused
and silent servers each get the verdict the agent acts on, within the check's limit."""

from __future__ import annotations

import asyncio
import time

import pytest

from peer.ice_probe import Verdict, probe
from signaling.ice import IceServer
from tests.net.coturn import running_coturn
from tests.net.topology import call_in, topology
from tests.support import seconds

pytestmark = pytest.mark.usefixtures("netns")


def probe_from(ns: str, server: IceServer, limit: float = 2.0) -> tuple[Verdict, str, float]:
    """``probe(server)`` run in namespace ``ns``: verdict, detail, seconds taken."""

    async def timed() -> tuple[Verdict, str, float]:
        started = time.monotonic()
        verdict, detail = await probe(server, limit)
        return verdict, detail, time.monotonic() - started

    return call_in(ns, lambda: asyncio.run(timed()))


#: A live or refusing coturn answers on the hub's veth in milliseconds: this is only the
#: ceiling for a busy machine, far below the check's own limit (2 s) that a hang would hit.
ANSWERED = 1.0
#: The limit given to checks of a silent server: they end at it (asyncio.timeout, never
#: early), and no later than a busy machine's scheduling delay after.
SILENT_LIMIT = 0.5


def test_turn_and_stun_checks_tell_live_refused_and_silent_servers_apart() -> None:
    with topology(clients=1) as topo, running_coturn(topo) as turn:
        ns = topo.clients[0].ns
        user, password = turn.credentials("alice")
        for transport in ("udp", "tcp"):
            live = IceServer(turn.url(transport), user, password)
            verdict, detail, took = probe_from(ns, live)
            assert verdict is Verdict.OK, (transport, detail, turn.log()[-2000:])
            assert took < seconds(ANSWERED)
            wrong = IceServer(turn.url(transport), user, "bm90IHRoZSBwYXNzd29yZA==")
            verdict, detail, took = probe_from(ns, wrong)
            assert verdict is Verdict.REFUSED and "refused our credentials (401" in detail
            assert took < seconds(ANSWERED)
        expired = IceServer(turn.url("udp"), *turn.credentials("alice", ttl=-60))
        assert probe_from(ns, expired)[0] is Verdict.REFUSED
        stun_url = turn.url("udp").replace("turn:", "stun:").split("?")[0]
        assert probe_from(ns, IceServer(stun_url))[0] is Verdict.OK
        for url in (f"turn:{topo.dead_addr}:3478", f"stun:{topo.dead_addr}:3478"):
            server = IceServer(url, user, password)
            verdict, detail, took = probe_from(ns, server, limit=SILENT_LIMIT)
            assert verdict is Verdict.DEAD and f"no answer within {SILENT_LIMIT:g} s" in detail
            assert SILENT_LIMIT <= took < SILENT_LIMIT + seconds(1.0), took
