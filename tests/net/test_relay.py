"""Peers that can only meet through TURN: each sits in its own network namespace that
reaches the hub (signaling server + coturn at 10.77.0.1) and nothing else, so media flows
through coturn's relay or not at all.

Everything is a real process: ``python -m signaling`` and coturn in the hub, ``meshpeer
join`` agents and Debian's Chromium in the client namespaces. The server hands every peer
TURN credentials minted from the secret it shares with coturn (``--turn-secret-file``).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from playwright.async_api import BrowserContext, async_playwright

from tests.browser.pages import (
    CHROMIUM,
    eventually,
    open_room_page,
    persistent_browser,
)
from tests.net.coturn import Coturn, running_coturn
from tests.net.topology import Topology, call_in, netns_wrapper, topology
from tests.support import seconds

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("netns"),
]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SIGNALING_PORT = 8080  # inside the hub namespace: nothing else listens there
ROOM = "relay"
#: Small video: two agents and a browser share the machine's two cores.
SMALL_VIDEO = ["--width", "160", "--height", "120", "--fps", "15"]
FIRST_FRAME = re.compile(r"first (video|audio) frame from (\S+) after ([0-9.]+) s")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _records(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a --stats-json file (a half-written last line is skipped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines(keepends=True):
        if line.endswith("\n"):
            records.append(json.loads(line))
    return records


@dataclass
class AgentRun:
    """One ``meshpeer join`` process in a client namespace, with its stdout and stats files."""

    peer_id: str
    ns: str
    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    stats_path: Path
    started: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        """Its stdout so far: the progress and status lines."""
        return _read(self.stdout_path)

    def errors(self) -> str:
        return _read(self.stderr_path)

    def joined_at(self) -> float | None:
        """Unix time its join began (from --stats-json)."""
        records = _records(self.stats_path)
        return float(records[0]["joined_at"]) if records else None

    def entries(self, peer: str) -> list[dict[str, Any]]:
        """Every stats entry this agent wrote about ``peer``, oldest first."""
        return [
            entry
            for record in _records(self.stats_path)
            for entry in record["peers"]
            if entry["peer"] == peer
        ]

    def latest(self, peer: str) -> dict[str, Any] | None:
        entries = self.entries(peer)
        return entries[-1] if entries else None

    def first_frame_s(self, peer: str, kind: str = "video") -> float | None:
        """From the progress line ``first video frame from X after N s`` (seconds since join)."""
        for match in FIRST_FRAME.finditer(self.output()):
            if match.group(1) == kind and match.group(2) == peer:
                return float(match.group(3))
        return None

    def stop(self, timeout: float) -> int | None:
        """SIGTERM (a clean leave); the exit status, or None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            return None


@dataclass
class RelayRoom:
    """A topology with coturn and the signaling server running in its hub."""

    topo: Topology
    turn: Coturn
    server: subprocess.Popen[bytes]
    server_log: Path
    workdir: Path
    agents: list[AgentRun] = field(default_factory=list)
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://{self.topo.service_addr}:{SIGNALING_PORT}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.topo.service_addr}:{SIGNALING_PORT}/ws"

    def join(self, ns: str, peer_id: str, *, duration: float = 60.0) -> AgentRun:
        stdout_path = self.workdir / f"{peer_id}.out"
        stderr_path = self.workdir / f"{peer_id}.err"
        stats_path = self.workdir / f"{peer_id}.jsonl"
        out, err = stdout_path.open("wb"), stderr_path.open("wb")
        self._files += [out, err]
        argv = [
            PYTHON, "-m", "peer", "join", self.ws_url, "--room", ROOM, "--id", peer_id,
            *SMALL_VIDEO, "--duration", str(duration),
            "--stats-interval", "0.5", "--stats-json", str(stats_path),
        ]  # fmt: skip
        proc = self.topo.spawn(ns, argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT)
        agent = AgentRun(peer_id, ns, proc, stdout_path, stderr_path, stats_path)
        self.agents.append(agent)
        return agent

    def report(self) -> str:
        """Everything that says what went wrong, for assertion messages."""
        parts = []
        for agent in self.agents:
            parts.append(f"--- {agent.peer_id} (exit {agent.proc.poll()}):\n{agent.output()}")
            parts.append(f"--- {agent.peer_id} stderr:\n{agent.errors()[-3000:]}")
            tail = _records(agent.stats_path)[-1:]
            parts.append(f"--- {agent.peer_id} last stats: {json.dumps(tail)}")
        server = self.server_log.read_text(errors="replace") if self.server_log.exists() else ""
        parts.append(f"--- server:\n{server[-3000:]}")
        parts.append(f"--- coturn:\n{self.turn.log()[-4000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for agent in self.agents:
            agent.stop(timeout=seconds(5))
        if self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=seconds(5))
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=5)
        for handle in self._files:
            handle.close()


def _healthz(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    with opener.open(f"{url}/healthz", timeout=0.5) as response:
        body: bytes = response.read()
        return body


def _wait_listening(room: RelayRoom, probe_ns: str) -> None:
    """Until /healthz answers from ``probe_ns`` (a client: the path the peers will take)."""
    deadline = time.monotonic() + seconds(10)
    while True:
        if room.server.poll() is not None:
            raise RuntimeError(f"signaling server exited {room.server.poll()}:\n{room.report()}")
        try:
            call_in(probe_ns, lambda: _healthz(room.http_url))
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"signaling server not answering: {exc}\n{room.report()}"
                ) from None
        time.sleep(0.05)


@contextlib.contextmanager
def relay_room(
    server_secret: str | None = None, transports: tuple[str, ...] = ("udp",)
) -> Iterator[RelayRoom]:
    """Two isolated clients; coturn and ``python -m signaling`` (a --turn-url per transport,
    in that order) in the hub. ``server_secret`` (default: coturn's) is what the signaling
    server mints with."""
    with (
        tempfile.TemporaryDirectory(prefix="meshpeer-relay-") as tmp,
        topology(2) as topo,
        running_coturn(topo) as turn,
    ):
        workdir = Path(tmp)
        secret_file = workdir / "turn.secret"
        secret_file.write_text((server_secret or turn.secret) + "\n")
        server_log = workdir / "server.log"
        argv = [
            PYTHON, "-m", "signaling", "--host", topo.service_addr, "--port", str(SIGNALING_PORT),
            "--turn-secret-file", str(secret_file),
        ]  # fmt: skip
        for transport in transports:
            argv += ["--turn-url", turn.url(transport)]
        with server_log.open("wb") as log:
            server = topo.spawn(
                topo.hub, argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )  # fmt: skip
        room = RelayRoom(topo, turn, server, server_log, workdir)
        try:
            _wait_listening(room, topo.clients[0].ns)
            yield room
        finally:
            room.close()


def _wait_until(condition: Callable[[], bool], limit: float, what: str, room: RelayRoom) -> None:
    """Poll ``condition`` every 0.1 s; fail after ``limit`` s with everything the room logged."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:.1f} s: {what}\n{room.report()}")
        time.sleep(0.1)


def _relayed_and_flowing(entry: dict[str, Any] | None) -> bool:
    return (
        entry is not None
        and entry["state"] == "connected"
        and "relay" in entry["route"]
        and entry["frames_in"] > 0
        and entry["audio_frames_in"] > 0
    )


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
        _wait_until(
            lambda: all(_relayed_and_flowing(me.latest(other.peer_id)) for me, other in pairs),
            seconds(15),
            "both agents connected through the relay with video and audio",
            room,
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
        _wait_until(
            lambda: all(_relayed_and_flowing(me.latest(other.peer_id)) for me, other in pairs),
            seconds(20),
            "both agents connected through the relay over TCP",
            room,
        )
        dead = f"ICE server {room.turn.url('udp')}: no answer within"
        _wait_until(
            lambda: all(dead in me.output() for me, _ in pairs),
            seconds(5),
            "both agents to report the UDP URL dead (after the check's 2 s)",
            room,
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
        _wait_until(
            seen, seconds(10), "both agents to say the TURN server refused our credentials", room
        )
        ended: dict[str, float] = {}

        def all_ended() -> bool:
            for agent in agents:
                if agent.proc.poll() is not None:
                    ended.setdefault(agent.peer_id, time.monotonic())
            return len(ended) == len(agents)

        # Python start-up (~2 s on two busy cores) + --duration + leaving: never a hang.
        _wait_until(all_ended, duration + seconds(10), "both agents to leave by themselves", room)
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
