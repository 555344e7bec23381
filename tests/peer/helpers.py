"""Shared pieces of the agent tests: small media, agents that always leave, server processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from peer.agent import Agent
from peer.events import RemoteTrack
from peer.link import PeerLink
from peer.media.fanout import EncodedTrack
from peer.media.sources import LocalMedia, VideoSettings, open_local_media
from signaling.protocol import PeerId
from tests.support import REPO, seconds

#: Small and slow enough that three or four agents in one process leave CPU for the others.
SMALL = VideoSettings(width=160, height=120, fps=15)

#: Seconds from the restarted server listening (2 s after the kill) to both bots being
#: back (issue 8): the backoff (0.25, 0.5, then 1 s, each +-25%, for ~7 s) has attempts at
#: most 1.25 s apart then; the rest is the join itself on a busy machine.
REJOIN_TARGET = 2.0


def small_media(label: str, audio: str = "tone") -> LocalMedia:
    return open_local_media("synthetic", audio, label=label, settings=SMALL)


def frames_from(agent: Agent, peer: str, kind: str = "video") -> int:
    link = agent.links.get(PeerId(peer))
    if link is None:
        return 0
    tap = link.tap("video" if kind == "video" else "audio")
    return tap.frames if tap is not None else 0


def full_mesh_flowing(agents: Sequence[Agent], minimum: int = 5) -> bool:
    return all(frames_from(a, b.peer_id) >= minimum for a in agents for b in agents if a is not b)


@asynccontextmanager
async def agents(
    url: str,
    names: Sequence[str],
    room: str = "test",
    *,
    media_for: Callable[[str], LocalMedia] = small_media,
    **kwargs: Any,
) -> AsyncIterator[list[Agent]]:
    """Agents joined one after another, each sending ``media_for(its name)``; all leave and
    stop their media afterwards."""
    joined: list[Agent] = []
    medias: list[LocalMedia] = []
    try:
        for name in names:
            media = media_for(name)
            medias.append(media)
            agent = Agent(url, room=room, peer_id=name, media=media, **kwargs)
            await agent.join()
            joined.append(agent)
        yield joined
    finally:
        await asyncio.gather(*(a.leave() for a in joined))
        for media in medias:
            media.stop()


class FrameTimes:
    """A FrameConsumer (``Agent(consumers=[...])``) that keeps the arrival time
    (``time.monotonic()``) of every decoded frame of each sending peer's first video track
    (index 0): the largest gap in a window says how long the picture froze, whatever
    happened meanwhile (a second track's frames cannot hide it)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def put_frame(self, track: RemoteTrack, frame: object) -> None:
        if track.kind == "video" and track.index == 0:
            self.times.setdefault(str(track.peer), []).append(time.monotonic())

    def track_ended(self, track: RemoteTrack) -> None:
        pass

    def max_gap(self, peer: str, start: float, end: float) -> float:
        """The longest time without a frame from ``peer`` between ``start`` and ``end``
        (both ends count: frames that stop before ``end`` make a gap up to it)."""
        return largest_gap(self.times.get(peer, []), start, end)


class TrackFrames:
    """A FrameConsumer counting the frames of each remote track, told apart by the track
    (``agent.sinks.add(it)`` at run time: it records the ``track_started`` calls too)."""

    def __init__(self) -> None:
        self.frames: dict[RemoteTrack, int] = {}
        self.started: list[RemoteTrack] = []

    def track_started(self, track: RemoteTrack) -> None:
        self.started.append(track)

    def put_frame(self, track: RemoteTrack, frame: object) -> None:
        self.frames[track] = self.frames.get(track, 0) + 1

    def track_ended(self, track: RemoteTrack) -> None:
        pass

    def video_from(self, peer: PeerId) -> dict[int, int]:
        """Frames of each of ``peer``'s video tracks, by index."""
        return {t.index: n for t, n in self.frames.items() if t.peer == peer and t.kind == "video"}


def largest_gap(stamps: Sequence[float], start: float, end: float) -> float:
    """The longest stretch between ``start`` and ``end`` with none of ``stamps`` in it."""
    points = [start, *(t for t in stamps if start <= t <= end), end]
    return max(points[i + 1] - points[i] for i in range(len(points) - 1))


#: Runs ``meshpeer serve ARGS`` once the wall clock reaches ARGV[1] (imports done first).
_SERVE_AT = (
    "import sys, time\n"
    "from peer.cli import main\n"
    "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
    "sys.exit(main(['serve', *sys.argv[2:]]))\n"
)


async def serve_at(port: int, at: float) -> asyncio.subprocess.Process:
    """A ``meshpeer serve`` process on 127.0.0.1:``port`` that binds at wall-clock time
    ``at`` (``time.time()``), returned once it accepts connections.

    The process starts and imports at once, so the server comes back at a precise moment
    (a restart "2 s after the kill") whatever Python's start-up costs on a busy machine.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVE_AT, repr(at), "--port", str(port), "--log-level", "WARNING",
        cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = max(at, time.time()) + seconds(10)
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if proc.returncode is not None or time.time() > deadline:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
                raise AssertionError(
                    f"no server listening on port {port} (exit {proc.returncode})"
                ) from None
            await asyncio.sleep(0.01)
            continue
        writer.close()
        return proc


def join_command(url: str, peer_id: str, *extra: str) -> list[str]:
    """``meshpeer join`` with small video, quiet, in room ``test``: run with ``cwd=REPO``."""
    return [
        sys.executable, "-m", "peer", "join", url, "--room", "test", "--id", peer_id,
        "--width", "160", "--height", "120", "--fps", "15", "--quiet", *extra,
    ]  # fmt: skip


async def connectable(url: str) -> None:
    """Return once something accepts TCP connections at ``url``'s host and port."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {url}")


async def stop(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` (SIGKILL) unless it has exited, and reap it."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def serve(port: int) -> asyncio.subprocess.Process:
    """A ``meshpeer serve`` process on 127.0.0.1:``port``, returned once it accepts connections."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "peer", "serve", "--port", str(port), "--log-level", "WARNING",
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    await connectable(f"ws://127.0.0.1:{port}/ws")
    return proc


def sent_video(link: PeerLink) -> list[bytes]:
    """What ``link``'s video sender takes from its shared encoder from now on, in order."""
    track = next(
        t.sender.track
        for t in link.pc.getTransceivers()
        if isinstance(t.sender.track, EncodedTrack) and t.sender.track.kind == "video"
    )
    sent: list[bytes] = []
    recv = track.recv

    async def recording() -> Any:
        packet = await recv()
        sent.append(bytes(packet))
        return packet

    track.recv = recording  # type: ignore[method-assign]
    return sent
