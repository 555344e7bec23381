"""The pieces of the namespace tests that run real processes: ``meshpeer join`` agents
(their stdout and ``--stats-json`` files), a hub with coturn and ``python -m signaling``
(``relay_room``), and a blocking wait that reports what the processes logged."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.net.coturn import Coturn, running_coturn
from tests.net.topology import Topology, call_in, topology
from tests.support import REPO, seconds

ROOT = REPO
PYTHON = sys.executable
SIGNALING_PORT = 8080  # inside the hub namespace: nothing else listens there
ROOM = "relay"
#: Small video: two agents and a browser share the machine's two cores.
SMALL_VIDEO = ["--width", "160", "--height", "120", "--fps", "15"]
FIRST_FRAME = re.compile(r"first (video|audio) frame from (\S+) after ([0-9.]+) s")


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def stats_records(path: Path) -> list[dict[str, Any]]:
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
        return read_text(self.stdout_path)

    def errors(self) -> str:
        return read_text(self.stderr_path)

    def joined_at(self) -> float | None:
        """Unix time its join began (from --stats-json)."""
        records = stats_records(self.stats_path)
        return float(records[0]["joined_at"]) if records else None

    def entries(self, peer: str) -> list[dict[str, Any]]:
        """Every stats entry this agent wrote about ``peer``, oldest first."""
        return [
            entry
            for record in stats_records(self.stats_path)
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
            tail = stats_records(agent.stats_path)[-1:]
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


def healthz(url: str) -> bytes:
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
            call_in(probe_ns, lambda: healthz(room.http_url))
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


def wait_until(
    condition: Callable[[], bool], limit: float, what: str, report: Callable[[], str]
) -> None:
    """Poll ``condition`` every 0.1 s; fail after ``limit`` s with ``report()`` (everything the
    processes logged). Blocking: the tests here drive processes, not an event loop."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:.1f} s: {what}\n{report()}")
        time.sleep(0.1)


def relayed_and_flowing(entry: dict[str, Any] | None) -> bool:
    return (
        entry is not None
        and entry["state"] == "connected"
        and "relay" in entry["route"]
        and entry["frames_in"] > 0
        and entry["audio_frames_in"] > 0
    )
