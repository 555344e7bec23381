"""Peers that can only meet through TURN: each sits in its own network namespace that
reaches the hub (signaling server + coturn at 10.77.0.1) and nothing else, so media flows
through coturn's relay or not at all.

Everything is a real process: ``python -m signaling`` and coturn in the hub, ``meshpeer
join`` agents and Debian's Chromium in the client namespaces. The server hands every peer
TURN credentials minted from the secret it shares with coturn (``--turn-secret-file``).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, async_playwright

from tests.browser.pages import CHROMIUM, open_room_page, persistent_browser
from tests.net.coturn import Coturn
from tests.net.relay import (
    ROOM,
    AgentRun,
    relay_room,
    relayed_and_flowing,
    wait_until,
)
from tests.net.topology import netns_wrapper
from tests.support import eventually, seconds

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("netns"),
]


def _allocated_for(turn: Coturn, peer: str) -> bool:
    """coturn made an allocation for REST username ``<expiry>:<peer>``."""
    pattern = rf"new, realm=<[^>]*>, username=<\d+:{re.escape(peer)}>"
    return re.search(pattern, turn.log()) is not None


def test_two_agents_meet_through_the_relay() -> None:
    """No path between the namespaces but coturn's: both agents connect through it with
    the credentials the server minted for them, and say so in their ``route``."""
    with relay_room() as room:
        one, two = room.topo.clients
        alice = room.join(one.ns, "alice")
        bob = room.join(two.ns, "bob")
        pairs = ((alice, bob), (bob, alice))
        wait_until(
            lambda: all(relayed_and_flowing(me.latest(other.peer_id)) for me, other in pairs),
            seconds(15),
            "both agents connected through the relay with video and audio",
            room.report,
        )
        routes = {}
        for me, other in pairs:
            entry = me.latest(other.peer_id)
            assert entry is not None
            routes[me.peer_id] = entry["route"]
            # Never a direct path: there is none between the namespaces.
            assert all("relay" in e["route"] for e in me.entries(other.peer_id) if e["route"])
        # Route detection: each end reads a pair through a relay. Not always the same pair
        # from both ends (seen: host-relay on both, each sending to the other's relay).
        assert all("relay" in route for route in routes.values()), routes
        assert _allocated_for(room.turn, "alice") and _allocated_for(room.turn, "bob")
        first = {
            me.peer_id: (me.first_frame_s(other.peer_id), me.first_frame_s(other.peer_id, "audio"))
            for me, other in pairs
        }
        exits = [me.stop(timeout=seconds(10)) for me, _ in pairs]
        assert exits == [0, 0], room.report()
        for me, _ in pairs:
            assert "Traceback" not in me.errors(), room.report()
        print(f"\nrelay: routes {routes}; first (video, audio) frame, s since join: {first}")


def test_where_udp_is_blocked_the_agents_relay_over_tcp() -> None:
    """A network that drops all UDP (some offices, hotels): the agents' checks find the UDP
    TURN URL dead and the TCP one alive, so they relay over TCP from the first connection,
    although the server lists UDP first (and aioice would use only that one)."""
    with relay_room(transports=("udp", "tcp")) as room:
        one, two = room.topo.clients
        for client in (one, two):
            # Silently, as a real firewall does: the hub drops every UDP packet from the
            # client on arrival (a drop on the client's own output would be an error there).
            table = f"mp_noudp_{client.hub_if}"
            script = (
                f"table netdev {table} {{\n chain in {{ type filter hook ingress device "
                f'"{client.hub_if}" priority 0; meta l4proto udp drop; }}\n}}\n'
            )
            argv = ["ip", "netns", "exec", room.topo.hub, "nft", "-f", "-"]
            completed = subprocess.run(argv, input=script, text=True, capture_output=True)
            assert completed.returncode == 0, completed.stderr
        alice = room.join(one.ns, "alice")
        bob = room.join(two.ns, "bob")
        pairs = ((alice, bob), (bob, alice))
        wait_until(
            lambda: all(relayed_and_flowing(me.latest(other.peer_id)) for me, other in pairs),
            seconds(20),
            "both agents connected through the relay over TCP",
            room.report,
        )
        dead = f"ICE server {room.turn.url('udp')}: no answer within"
        wait_until(
            lambda: all(dead in me.output() for me, _ in pairs),
            seconds(5),
            "both agents to report the UDP URL dead (after the check's 2 s)",
            room.report,
        )
        for me, _ in pairs:
            # Only relay-relay can work: each side's only candidate is its TCP-borne relay.
            assert me.latest(_other(pairs, me).peer_id)["route"] == "relay-relay"  # type: ignore[index]
        # coturn took each agent's allocation over a TCP connection from its address (its
        # start-up lines name TCP too, but no client address).
        log = room.turn.log()
        for client, agent in ((one, alice), (two, bob)):
            tcp_from = rf"IPv4\. tcp or tls connected to: {re.escape(client.addr)}:\d+"
            assert re.search(tcp_from, log), (client.addr, log[-3000:])
            assert _allocated_for(room.turn, agent.peer_id), log[-3000:]
        first = {me.peer_id: me.first_frame_s(other.peer_id) for me, other in pairs}
        print(f"\nUDP blocked: relayed over TCP, first video frame (s since join): {first}")


def _other(pairs: tuple[tuple[AgentRun, AgentRun], ...], me: AgentRun) -> AgentRun:
    return next(other for mine, other in pairs if mine is me)


def test_wrong_turn_secret_is_reported_and_the_agents_still_leave_on_time() -> None:
    """The server mints credentials coturn refuses: each agent says so in plain words at
    once, no connection is made (there is no other path), and --duration still ends it."""
    duration = 6.0
    with relay_room(server_secret="not-the-secret-coturn-has-but-32-bytes-long") as room:
        one, two = room.topo.clients
        alice = room.join(one.ns, "alice", duration=duration)
        bob = room.join(two.ns, "bob", duration=duration)
        agents = (alice, bob)
        joined: dict[str, float] = {}
        refused: dict[str, float] = {}

        def seen() -> bool:
            now = time.monotonic()
            for agent in agents:
                out = agent.output()
                if "joined; in the room" in out:
                    joined.setdefault(agent.peer_id, now)
                if "refused our credentials" in out:
                    refused.setdefault(agent.peer_id, now)
            return len(refused) == len(agents)

        # Starting Python with aiortc takes a second or two; the check itself, milliseconds.
        wait_until(
            seen,
            seconds(10),
            "both agents to say the TURN server refused our credentials",
            room.report,
        )
        ended: dict[str, float] = {}

        def all_ended() -> bool:
            for agent in agents:
                if agent.proc.poll() is not None:
                    ended.setdefault(agent.peer_id, time.monotonic())
            return len(ended) == len(agents)

        # Python start-up (~2 s on two busy cores) + --duration + leaving: never a hang.
        wait_until(
            all_ended, duration + seconds(10), "both agents to leave by themselves", room.report
        )
        assert [a.proc.returncode for a in agents] == [0, 0], room.report()
        ran = {a.peer_id: round(ended[a.peer_id] - a.started, 2) for a in agents}
        assert all(value >= duration for value in ran.values()), ran  # not a crash either
        after_join = {}
        for agent in agents:
            # "within a few seconds" of its join (both seen by polling, 0.1 s apart at most)
            after = refused[agent.peer_id] - joined.get(agent.peer_id, refused[agent.peer_id])
            after_join[agent.peer_id] = round(after, 2)
            assert after <= seconds(3), (agent.peer_id, after)
            lines = [ln for ln in agent.output().splitlines() if "refused our credentials" in ln]
            assert lines[0].startswith(f"[{agent.peer_id}] ICE server "), lines
            assert room.turn.url("udp") in lines[0] and "401" in lines[0], lines
            assert "Traceback" not in agent.errors(), room.report()
        for me, other in ((alice, bob), (bob, alice)):
            states = {e["state"] for e in me.entries(other.peer_id)}
            assert states and "connected" not in states, room.report()
            assert f"connection to {other.peer_id}: connected" not in me.output()
            # coturn refused the credentials minted for this very peer.
            pattern = rf"user <\d+:{me.peer_id}>: incoming packet \w+ processed, error 401"
            assert re.search(pattern, room.turn.log()), room.turn.log()[-3000:]
        print(
            f"\nwrong secret: refusal printed {after_join} s after the 'joined' line; "
            f"agents exited 0 after {ran} s (from spawn) with --duration {duration}"
        )


# -- a browser and an agent ----------------------------------------------------------------

SELECTED_PAIR_JS = """
async (peer) => {
  const link = meshpeer.page.links.get(peer);
  if (!link || !link.pc) return null;
  const report = await link.pc.getStats();
  let pair = null;
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) {
      pair = report.get(s.selectedCandidatePairId) ?? pair;
    }
  });
  if (!pair) {
    report.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
    });
  }
  if (!pair) return null;
  const local = report.get(pair.localCandidateId);
  const remote = report.get(pair.remoteCandidateId);
  return {
    state: pair.state,
    nominated: pair.nominated,
    bytesReceived: pair.bytesReceived,
    local: local?.candidateType,
    localAddress: `${local?.address}:${local?.port}`,
    relayProtocol: local?.relayProtocol ?? null,
    remote: remote?.candidateType,
    remoteAddress: `${remote?.address}:${remote?.port}`,
  };
}
"""


@contextlib.asynccontextmanager
async def chromium_in(ns: str, origin: str) -> AsyncIterator[BrowserContext]:
    """Debian's Chromium inside namespace ``ns`` (through a wrapper script), fresh profile,
    fake camera granted, plain host IPs in its candidates, and ``origin`` (plain http on a
    non-loopback address) treated as secure so the page may open the camera."""
    extra = [
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        f"--unsafely-treat-insecure-origin-as-secure={origin}",
        "--no-proxy-server",
    ]
    with tempfile.TemporaryDirectory(prefix="meshpeer-chromium-") as tmp:
        wrapper = netns_wrapper(ns, str(CHROMIUM), Path(tmp) / "chromium-in-netns")
        async with (
            async_playwright() as playwright,
            persistent_browser(
                playwright, camera=True, executable=wrapper, extra_args=extra
            ) as context,
        ):
            yield context


async def test_browser_and_agent_meet_through_the_relay() -> None:
    """Chromium in one namespace, an agent in the other: the page takes the TURN server from
    its peer-list, and media goes both ways through coturn."""
    with relay_room() as room:
        one, two = room.topo.clients
        async with chromium_in(one.ns, room.http_url) as context:
            web = await open_room_page(context, room.http_url, peer_id="browser", room=ROOM)
            snap = await web.wait_joined()
            assert snap["sending"] == {"audio": True, "video": True}, web.console
            assert snap["iceSource"] == "peer-list", snap
            urls = [s["urls"] for s in snap["iceServers"]]
            assert urls in ([room.turn.url("udp")], [[room.turn.url("udp")]]), snap["iceServers"]
            agent = room.join(two.ns, "agent")

            async def agent_relayed() -> bool:
                entry = agent.latest("browser")
                return bool(
                    entry is not None
                    and entry["state"] == "connected"
                    and "relay" in entry["route"]
                    and entry["frames_in"] > 0
                    and entry["audio_frames_in"] > 0
                )

            try:
                await web.wait_state("agent", "connected", within=15)
                await web.wait_receiving("agent", "video", within=10)
                await web.wait_receiving("agent", "audio", within=10)
                await eventually(agent_relayed, seconds(10), "the agent receiving via the relay")
                pair = await eventually(
                    lambda: web.page.evaluate(SELECTED_PAIR_JS, "agent"),
                    seconds(5),
                    "the browser's selected candidate pair",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{web.console}\n{room.report()}") from None
            assert pair["state"] == "succeeded" and pair["nominated"], pair
            assert "relay" in (pair["local"], pair["remote"]), pair
            entry = agent.latest("browser")
            assert entry is not None
            # Each side's pair goes through a relay. Not necessarily the same pair from both
            # ends: with relays on both sides, Chromium (controlling) and aioice may each
            # settle on a pair through their own relay (seen once: relay-host on both).
            assert "relay" in entry["route"], (entry["route"], pair)
            snap = await web.snapshot()
            joined_at = agent.joined_at()
            page_first = (
                round(snap["firstFrameAt"]["agent"] / 1000 - joined_at, 3)
                if "agent" in snap["firstFrameAt"] and joined_at is not None
                else None
            )
            assert not [line for line in web.console if line.startswith("pageerror")], web.console
        assert agent.stop(timeout=seconds(10)) == 0, room.report()
        assert "Traceback" not in agent.errors(), room.report()
        print(
            f"\nbrowser: pair {pair['local']}-{pair['remote']} ({pair['localAddress']} -> "
            f"{pair['remoteAddress']}), agent route {entry['route']}; first video frame s since "
            f"the agent's join: at the agent {agent.first_frame_s('browser')}, "
            f"on the page {page_first}"
        )
