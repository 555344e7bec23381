"""Faults with real processes and sockets (issue 8): a killed server, a killed or frozen
bot, a server that comes back while the agents' reconnect backoff is at its longest.

Every number a test measures is printed (run with ``-s`` to see them): receive gaps,
rejoin times, peer-left delays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from peer import events as ev
from peer import mesh
from peer.agent import Agent
from peer.media.recorder import Recorder
from peer.mesh import LinkState
from signaling.protocol import PeerId
from tests.peer.helpers import (
    REJOIN_TARGET,
    FrameTimes,
    agents,
    frames_from,
    full_mesh_flowing,
    join_command,
    serve,
    serve_at,
    stop,
)
from tests.support import REPO, RunningServer, eventually, free_port, seconds

pytestmark = pytest.mark.slow

#: The server's default heartbeat: silent for 5 s, pinged, no answer within 2.5 s: dropped.
HEARTBEAT_BOUND = 7.5
#: The agent's reconnect backoff at its longest: 5 s, +25% jitter.
MAX_BACKOFF = 5.0 * 1.25


async def healthz(port: int) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(1)) as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return body


async def wait_healthz_peers(port: int, peers: int, within: float) -> float:
    """Until the server's /healthz counts ``peers``; the time.monotonic() it did."""
    deadline = time.monotonic() + seconds(within)
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await healthz(port)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = exc
        else:
            if last.get("peers") == peers:
                return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"/healthz never counted {peers} peers (last: {last!r})")


class Rejoins:
    """time.monotonic() of every ``Joined(rejoin=True)`` of each agent."""

    def __init__(self, agents: list[Agent]) -> None:
        self.at: dict[str, list[float]] = {a.peer_id: [] for a in agents}
        for agent in agents:
            agent.add_listener(self._listener(agent.peer_id))

    def _listener(self, me: str) -> Callable[[ev.Event], None]:
        def on(event: ev.Event) -> None:
            if isinstance(event, ev.Joined) and event.rejoin:
                self.at[me].append(time.monotonic())

        return on

    def first_after(self, since: float) -> dict[str, float]:
        return {me: next((t for t in ts if t >= since), 0.0) for me, ts in self.at.items()}


class _Attempts(logging.Handler):
    """time.monotonic() and number of every failed reconnect attempt the agents log."""

    PATTERN = re.compile(r"reconnect attempt (\d+) failed")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.at: list[tuple[float, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.search(record.getMessage())
        if match:
            self.at.append((time.monotonic(), int(match.group(1))))


@pytest.fixture
def attempts() -> Iterator[_Attempts]:
    handler = _Attempts()
    logger = logging.getLogger("peer.signaling_client")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def backoff_after(attempt: int) -> float:
    """The longest wait after failed reconnect ``attempt`` (1 first): docs/join.md's 0.25,
    0.5, then 1 s for ~7 s, then 2, 4, 5 s, +25% jitter (peer.mesh.reconnect_delay)."""
    return mesh.reconnect_delay(attempt, 0.999999)


def next_attempt_by(attempts: _Attempts, up: float) -> float:
    """When the agents' first attempt after ``up`` (the server listening) is due at the
    latest: the longest backoff after the last attempts that failed before it."""
    return max((t + backoff_after(n) for t, n in attempts.at if t <= up), default=up + 0.3)


# -- 1. the server killed mid-call and started again on the same port ------------------


async def test_killed_server_media_never_stalls_and_the_bots_rejoin_at_once(
    attempts: _Attempts,
) -> None:
    """kill -9 on the server, a new one on the same port 2 s later: video keeps coming
    both ways with no gap over 0.5 s through the whole outage, and both bots are back in
    the room (same IDs, same connections) at their first reconnect attempt after the new
    server listens (see REJOIN_TARGET)."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    server = await serve(port)
    restart: asyncio.Future[asyncio.subprocess.Process] | None = None
    times = FrameTimes()
    try:
        async with agents(url, ["alice", "bob"], consumers=[times]) as pair:
            alice, bob = pair
            rejoins = Rejoins(pair)
            await eventually(lambda: full_mesh_flowing(pair, 15), seconds(15), "media both ways")
            links = {a.peer_id: dict(a.links) for a in pair}
            await asyncio.sleep(1.0)  # a second of undisturbed media before the fault

            killed = time.monotonic()
            server.send_signal(signal.SIGKILL)
            await server.wait()
            # serve_at binds at that moment (its start-up already done): the restart
            listening = killed + 2.0
            restart = asyncio.ensure_future(serve_at(port, time.time() + 2.0))
            await eventually(
                lambda: not any(a.signaling_connected for a in pair), seconds(5), "the drop"
            )
            server = await restart
            accepting = time.monotonic()
            await eventually(
                lambda: all(a.signaling_connected and a.reconnects == 1 for a in pair),
                seconds(10),
                "both bots to rejoin",
            )
            await eventually(
                lambda: alice.members == {"bob"} and bob.members == {"alice"},
                seconds(5),
                "the bots to see each other again",
            )
            counted = await wait_healthz_peers(port, 2, 5)
            back = rejoins.first_after(listening)
            await asyncio.sleep(2.0)  # media after the rejoin counts too
            end = time.monotonic()

            gaps = {
                f"{me.peer_id}<-{other.peer_id}": times.max_gap(other.peer_id, killed - 1.0, end)
                for me, other in ((alice, bob), (bob, alice))
            }
            rejoin_s = {me: round(t - listening, 3) for me, t in back.items()}
            due = next_attempt_by(attempts, listening)
            tries = [(round(t - killed, 2), n) for t, n in attempts.at]
            print(
                f"\nkilled server: failed attempts (s after the kill, number) {tries}; "
                f"restarted 2 s after the kill (seen accepting by {accepting - killed:.2f} s); "
                f"rejoined (s after the restart) {rejoin_s}, next attempt due by "
                f"{due - listening:.2f} s; /healthz counted 2 peers "
                f"{counted - listening:.2f} s after the restart; largest video gap (1 s "
                f"before the kill to 2 s after the rejoin) "
                f"{ {k: round(v, 3) for k, v in gaps.items()} }"
            )
            assert {a.peer_id: dict(a.links) for a in pair} == links, "connections replaced"
            for me, other in ((alice, "bob"), (bob, "alice")):
                assert me.links[PeerId(other)].state is LinkState.CONNECTED
            assert all(t > 0 for t in back.values()), back
            # Each got in at its first attempt after the restart, due by the backoff.
            assert not [n for t, n in attempts.at if t > listening + 0.1], tries
            assert max(back.values()) <= due + 0.5, (rejoin_s, due - listening, tries)
            assert max(rejoin_s.values()) <= seconds(REJOIN_TARGET), (rejoin_s, tries)
            assert max(gaps.values()) <= seconds(0.5), gaps
    finally:
        if restart is not None:
            with contextlib.suppress(Exception):
                await stop(await restart)
        await stop(server)


# -- 2. a bot killed (or frozen): the others see it leave and release it -----------------


def _decoded(path: Path) -> dict[str, int]:
    """Frames per kind, decoding the whole file, and the duration its header gives (ms;
    -1 when it has none: a file nobody finalised)."""
    counts = {"video": 0, "audio": 0}
    with av.open(str(path)) as container:
        duration = container.duration
        counts["duration_ms"] = duration // 1000 if duration is not None else -1
        for frame in container.decode(*container.streams):
            counts["video" if isinstance(frame, av.VideoFrame) else "audio"] += 1
    return counts


#: A recorder sends nothing unless given a source (issue 19): this one is to be seen.
SENDING = ("--video", "synthetic", "--audio", "tone")


@pytest.mark.parametrize("how", ["kill", "freeze"])
async def test_dead_bot_leaves_and_is_released(
    how: str, server: RunningServer, tmp_path: Path
) -> None:
    """A ``meshpeer join --record`` process killed with SIGKILL (the kernel closes its
    socket: the server sees it at once) or frozen with SIGSTOP (the socket stays open:
    only the server's heartbeat finds out, within 7.5 s): the surviving bot gets
    ``peer-left``, closes the connection, its taps, and finalises its recording of the dead
    one, which decodes."""
    recorder = Recorder(tmp_path / "alice", session="alice")
    crasher_dir = tmp_path / "crasher"
    proc = await asyncio.create_subprocess_exec(
        *join_command(server.ws_url, "crasher", "--record", str(crasher_dir), *SENDING),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with agents(server.ws_url, ["alice"], recorder=recorder) as (alice,):
            seen: list[tuple[float, ev.Event]] = []
            alice.add_listener(lambda e: seen.append((time.monotonic(), e)))
            await eventually(
                lambda: frames_from(alice, "crasher") >= 45, seconds(30), "3 s of video"
            )
            link = alice.links[PeerId("crasher")]
            assert link.pc.connectionState == "connected"
            faulted = time.monotonic()
            proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)

            def left_at() -> float | None:
                gone = ev.PeerLeft(PeerId("crasher"))
                return next((t for t, e in seen if e == gone and t >= faulted), None)

            def closed_at() -> float | None:
                # Emitted once the connection, its taps and its recording are released.
                gone = ev.ConnectionStateChanged(PeerId("crasher"), LinkState.CLOSED)
                return next((t for t, e in seen if e == gone and t >= faulted), None)

            await eventually(
                lambda: left_at() is not None, seconds(HEARTBEAT_BOUND + 5), "peer-left"
            )
            await eventually(lambda: closed_at() is not None, seconds(5), "the link's release")
            left, closed = left_at(), closed_at()
            assert left is not None and closed is not None
            assert "crasher" not in alice.links
            files = [p for p in recorder.files() if p.name.startswith("alice-crasher-")]
            counts = await asyncio.to_thread(_decoded, files[0]) if files else {}
            print(
                f"\n{how}: peer-left {left - faulted:.3f} s after the signal, link closed and "
                f"released {closed - faulted:.3f} s; recording "
                f"{files[0].name if files else None}: {counts}"
            )
            bound = 0.5 if how == "kill" else HEARTBEAT_BOUND
            assert left - faulted <= seconds(bound) + 0.25, left - faulted
            assert link.state is LinkState.CLOSED
            assert link.pc.connectionState == "closed"
            assert all(tap.ended for tap in link.taps) and len(link.taps) == 2
            assert alice.members == set()
            assert len(files) == 1, recorder.files()
            assert counts["video"] > 0 and counts["audio"] > 0, counts
            assert counts["duration_ms"] > 0, counts  # finalised: its header has the length
            health = await healthz(server.port)
            assert health["peers"] == 1, health
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        err = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
        await recorder.close()
    assert "Traceback" not in err, err
    if how == "kill":
        # "A killed process still leaves a playable file missing at most its last second."
        mine = sorted(crasher_dir.glob("crasher-alice-*.mkv"))
        assert len(mine) == 1, list(crasher_dir.iterdir())
        counts = await asyncio.to_thread(_decoded, mine[0])
        print(f"the killed bot's own recording of alice: {counts}")
        assert counts["video"] > 0, counts


# -- 5. the server back while the reconnect backoff is at its longest ---------------------


async def test_server_back_while_the_backoff_is_at_its_longest(attempts: _Attempts) -> None:
    """The server is down long enough for the agents to reach their longest reconnect
    interval (0.25, 0.5, 1 s for ~7 s, 2, 4, then 5 s, each +-25%); once it is back, both are
    in the room again within that interval (6.25 s), with their media connections untouched."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    server = await serve(port)
    try:
        async with agents(url, ["alice", "bob"]) as pair:
            rejoins = Rejoins(pair)
            await eventually(lambda: full_mesh_flowing(pair), seconds(15), "media both ways")
            links = {a.peer_id: dict(a.links) for a in pair}
            killed = time.monotonic()
            server.send_signal(signal.SIGKILL)
            await server.wait()
            # Every interval of the schedule done once, each: the next ones are the 5 s ones.
            longest = len(mesh.RECONNECT_DELAYS)
            await eventually(
                lambda: sum(1 for _, n in attempts.at if n >= longest) >= 2,
                seconds(40),
                f"{longest} failed reconnect attempts per agent",
            )
            down_attempts = list(attempts.at)
            server = await serve(port)
            listening = time.monotonic()
            await eventually(
                lambda: all(a.signaling_connected and a.reconnects == 1 for a in pair),
                seconds(MAX_BACKOFF + 2),
                "both agents back",
            )
            await eventually(
                lambda: all(len(a.members) == 1 for a in pair), seconds(5), "each other"
            )
            back = rejoins.first_after(listening)
            rejoin_s = {me: round(t - listening, 3) for me, t in back.items()}
            tries = [(round(t - killed, 2), n) for t, n in down_attempts]
            print(
                f"\nbackoff: server down {listening - killed:.2f} s, "
                f"failed attempts (s after the kill, number) {tries}; back in the room "
                f"(s after the server listened): {rejoin_s}"
            )
            assert {a.peer_id: dict(a.links) for a in pair} == links
            assert all(t > 0 for t in back.values()), back
            assert max(rejoin_s.values()) <= seconds(MAX_BACKOFF) + 0.5, rejoin_s
            # nothing failed after the server was back: the first attempt got in
            assert not [n for t, n in attempts.at if t > listening + 0.1], attempts.at
            before = {a.peer_id: frames_from(a, "bob" if a.peer_id == "alice" else "alice")
                      for a in pair}  # fmt: skip
            await eventually(
                lambda: all(
                    frames_from(a, "bob" if a.peer_id == "alice" else "alice")
                    > before[a.peer_id] + 5
                    for a in pair
                ),
                seconds(5),
                "media still flowing",
            )
    finally:
        await stop(server)
