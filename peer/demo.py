"""``meshpeer demo``: a signaling server and N bots in this process, on loopback only.

The bots join one room one after another, exchange synthetic video and tone audio for
``--duration`` seconds, and the demo prints, per ordered pair, whether they connected,
the time to the first frame and the frame rate. The first bot records everyone and keeps
a mosaic; the recordings and a mosaic snapshot are left in the output folder.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

import peer.events as ev
from peer.agent import Agent
from peer.errors import MeshpeerError
from peer.media.fanout import Encoding
from peer.runner import local_preview, say
from peer.stats import PeerStats
from signaling import event_loop
from signaling.protocol import PeerId
from signaling.server import ServerConfig, SignalingServer
from signaling.session import Limits

ROOM = "demo"


@dataclass(frozen=True)
class PairResult:
    receiver: PeerId
    sender: PeerId
    connected: bool
    first_frame_s: float | None  # from the later of the two joins
    fps: float
    frames: int


def default_out_dir() -> Path:
    return Path.cwd() / f"meshpeer-demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def summary_table(results: list[PairResult]) -> str:
    header = ("receiver", "sender", "connected", "first frame", "fps", "frames")
    lines = ["{:<10} {:<10} {:<9} {:>11} {:>6} {:>7}".format(*header)]
    for r in results:
        first = f"{r.first_frame_s:.3f} s" if r.first_frame_s is not None else "-"
        lines.append(
            f"{r.receiver:<10} {r.sender:<10} {'yes' if r.connected else 'NO':<9} "
            f"{first:>11} {r.fps:>6.1f} {r.frames:>7}"
        )
    return "\n".join(lines)


async def _start_server(bots: int) -> tuple[web.AppRunner, str]:
    # Every bot gets a seat, even beyond a browser mesh's default of 8: each encodes once.
    limits = Limits(max_peers=max(bots, Limits().max_peers))
    server = SignalingServer(ServerConfig(limits=limits))
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"ws://127.0.0.1:{port}/ws"


async def demo(args: argparse.Namespace) -> int:
    from peer.media.mosaic import Mosaic, save_snapshot
    from peer.media.recorder import Recorder
    from peer.media.sources import VideoSettings, open_local_media

    out: Path = args.out or default_out_dir()
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    runner, url = await _start_server(args.bots)
    say(f"signaling server on {url}; {args.bots} bots in room '{ROOM}' for {args.duration:g} s")
    settings = VideoSettings(width=args.width, height=args.height, fps=args.fps)
    recorder = Recorder(out / "recordings")
    mosaic = Mosaic()
    agents: list[Agent] = []
    medias: list[Any] = []
    joined_at: dict[PeerId, float] = {}
    first_seen: dict[tuple[PeerId, PeerId], float] = {}
    previews: list[Any] = []
    try:
        for index in range(args.bots):
            name = PeerId(f"bot{index + 1}")
            media = open_local_media(args.video, args.audio, label=name, settings=settings)
            medias.append(media)
            first = index == 0
            agent = Agent(
                url,
                room=ROOM,
                peer_id=name,
                media=media,
                ice_servers=args.ice_server,
                recorder=recorder if first else None,
                mosaic=mosaic if first else None,
                stats_interval=None,
                encoding=Encoding(args.encoding),
            )
            agent.add_listener(_watch(name, first_seen))
            joined_at[name] = time.monotonic()
            await agent.join()
            agents.append(agent)
            if first:
                previews = local_preview(agent, mosaic)
            say(f"{name} joined")
        await asyncio.sleep(args.duration)
        stats = {agent.peer_id: await agent.stats() for agent in agents}
        results = _pairs(stats, joined_at, first_seen)
        say("")
        say(summary_table(results))
        snapshot = out / "mosaic.png"
        await asyncio.to_thread(save_snapshot, mosaic, snapshot)
        say(f"\nmosaic snapshot: {snapshot}")
    finally:
        await asyncio.gather(*(agent.leave() for agent in agents))
        for preview in previews:
            await preview.stop()
        files = await recorder.close()
        for media in medias:
            media.stop()
        await runner.cleanup()
    for path in files:
        say(f"recording: {path}")
    say(f"everything is in {out}")
    connected = all(r.connected and r.frames > 0 for r in results)
    return 0 if connected else 1


def _watch(name: PeerId, first_seen: dict[tuple[PeerId, PeerId], float]) -> Any:
    def show(event: ev.Event) -> None:
        match event:
            case ev.FirstFrame(peer=peer, kind="video"):
                first_seen[(name, peer)] = time.monotonic()
                say(f"{name} <- {peer}: first video frame")
            case ev.ConnectionStateChanged(peer=peer, state=state):
                say(f"{name} -- {peer}: {state}")
            case _:
                pass

    return show


def _pairs(
    stats: dict[PeerId, list[PeerStats]],
    joined_at: dict[PeerId, float],
    first_seen: dict[tuple[PeerId, PeerId], float],
) -> list[PairResult]:
    results = []
    names = sorted(joined_at)
    for receiver in names:
        by_peer = {s.peer: s for s in stats.get(receiver, [])}
        for sender in names:
            if sender == receiver:
                continue
            s = by_peer.get(sender)
            seen = first_seen.get((receiver, sender))
            start = max(joined_at[receiver], joined_at[sender])
            results.append(
                PairResult(
                    receiver,
                    sender,
                    s is not None and s.state == "connected",
                    round(seen - start, 4) if seen is not None else None,
                    s.fps_in if s is not None else 0.0,
                    s.frames_in if s is not None else 0,
                )
            )
    return results


def run_demo(args: argparse.Namespace) -> int:
    try:
        return event_loop.run(demo(args), use_uvloop=not args.no_uvloop)
    except (MeshpeerError, OSError) as exc:
        print(f"meshpeer demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
