"""Reading received video as numpy arrays: ``Agent.video_frames`` against the plain loop.

N sender processes (``meshpeer join``, synthetic video, no audio) send to one receiving
agent in this process. For each N, over the same window, three ways to read every stream:

- ``tap only``: the agent receiving and decoding, nobody reading (the floor);
- ``video_frames``: one ``agent.video_frames()`` iterator over everyone (conversion on the
  iterator's own thread);
- ``plain loop``: per stream, ``track = agent.subscribe(peer, "video")``, then
  ``await track.recv()`` and ``frame.to_ndarray(format="bgr24")`` on the event loop.

Reported: this process's CPU (all threads, decoding included) per stream, arrays read per
second per stream, and the event loop's lag p99 (a probe sleeping 10 ms). Also the cost
of the audio reader's resampling on the loop, per 20 ms frame.

    ./dev bench frames [--streams 1,4,8] [--width 640 --height 480] [--window 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_seconds, machine_info, write_result  # noqa: E402
from peer.agent import Agent  # noqa: E402
from peer.events import RemoteTrack  # noqa: E402
from peer.media.readers import AudioReader  # noqa: E402
from signaling.protocol import PeerId  # noqa: E402
from signaling.server import ServerConfig  # noqa: E402
from signaling.session import Limits  # noqa: E402
from tests.peer.helpers import frames_from  # noqa: E402
from tests.support import LoopLag, running_server  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "frames.json"


async def _measure(
    agent: Agent, streams: int, window: float, start: Callable[[list[int]], Awaitable[Any]]
) -> dict[str, float]:
    """CPU, arrays per second and lag p99 over ``window`` s while ``start``'s readers run
    (``start`` counts arrays into ``count[0]`` and returns what to stop)."""
    count = [0]
    stopper = await start(count)
    await asyncio.sleep(1.0)  # the readers are running
    pid = os.getpid()
    cpu, wall, read = cpu_seconds(pid), time.monotonic(), count[0]
    async with LoopLag() as lag:
        await asyncio.sleep(window)
    cpu, wall, read = cpu_seconds(pid) - cpu, time.monotonic() - wall, count[0] - read
    await stopper()
    return {
        "cpu_percent_per_stream": round(100 * cpu / wall / streams, 1),
        "arrays_per_s_per_stream": round(read / wall / streams, 1),
        "lag_p99_ms": round(1000 * lag.percentile(0.99), 1),
    }


async def _tap_only(count: list[int]) -> Callable[[], Awaitable[None]]:
    async def stop() -> None:
        return None

    return stop


def _with_video_frames(agent: Agent) -> Callable[[list[int]], Awaitable[Any]]:
    async def start(count: list[int]) -> Callable[[], Awaitable[None]]:
        async def read() -> None:
            async for _ in agent.video_frames():
                count[0] += 1

        task = asyncio.create_task(read())

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        return stop

    return start


def _with_plain_loop(agent: Agent, peers: list[PeerId]) -> Callable[[list[int]], Awaitable[Any]]:
    async def start(count: list[int]) -> Callable[[], Awaitable[None]]:
        tracks = [agent.subscribe(peer, "video") for peer in peers]

        async def read(track: Any) -> None:
            while True:
                frame = await track.recv()
                frame.to_ndarray(format="bgr24")
                count[0] += 1

        tasks = [asyncio.create_task(read(t)) for t in tracks if t is not None]

        async def stop() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for track in tracks:
                if track is not None:
                    track.stop()

        return stop

    return start


def _senders(url: str, room: str, streams: int, width: int, height: int) -> list[Any]:
    """``streams`` ``meshpeer join`` processes sending synthetic video, no audio."""
    size = ["--width", str(width), "--height", str(height), "--fps", "30"]
    join = [sys.executable, "-m", "peer", "join", url, "--room", room, "--audio", "none"]
    return [
        subprocess.Popen(
            [*join, "--id", f"s{i}", "--quiet", *size],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(streams)
    ]


async def run_streams(streams: int, width: int, height: int, window: float) -> dict[str, Any]:
    # The senders and the reader share a room: more than --max-peers' default of 8.
    config = ServerConfig(limits=Limits(max_peers=streams + 1))
    async with running_server(config) as server:
        room = f"frames{streams}"
        senders = _senders(server.ws_url, room, streams, width, height)
        agent = Agent(server.ws_url, room=room, peer_id="reader", stats_interval=None)
        try:
            await agent.join()
            peers = [PeerId(f"s{i}") for i in range(streams)]
            deadline = time.monotonic() + 60
            while not all(frames_from(agent, p) >= 30 for p in peers):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not every sender's video arrived: {agent.links}")
                await asyncio.sleep(0.2)
            rows = {
                "tap only": await _measure(agent, streams, window, _tap_only),
                "video_frames": await _measure(agent, streams, window, _with_video_frames(agent)),
                "plain loop": await _measure(
                    agent, streams, window, _with_plain_loop(agent, peers)
                ),
            }
        finally:
            await agent.leave()
            for proc in senders:
                proc.terminate()
            for proc in senders:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                if proc.poll() is None:
                    proc.kill()
    return {"streams": streams, "size": f"{width}x{height}@30", "ways": rows}


def audio_resample_cost(frames: int = 2000) -> float:
    """Microseconds on the loop per 20 ms frame (48 kHz stereo in, 16 kHz mono blocks out)."""
    reader = AudioReader(None, sample_rate=16000, channels=1, block_ms=20)
    track = RemoteTrack(PeerId("tone"), "audio")
    t = np.arange(960 * frames) / 48_000
    mono = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    made = []
    for n in range(frames):
        chunk = np.repeat(mono[n * 960 : (n + 1) * 960], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48_000, n * 960, Fraction(1, 48_000)
        made.append(frame)
    start = time.perf_counter()
    for frame in made:
        reader.put_frame(track, frame)
        while reader.take() is not None:
            pass
    return 1e6 * (time.perf_counter() - start) / frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="1,4,8", help="stream counts (default 1,4,8)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--window", type=float, default=5.0, help="seconds measured per way")
    args = parser.parse_args(argv)
    load_before, started = os.getloadavg(), time.monotonic()
    runs = [
        asyncio.run(run_streams(int(n), args.width, args.height, args.window))
        for n in args.streams.split(",")
    ]
    audio_us = audio_resample_cost()
    header = f"{'streams':>7}  {'way':<13} {'CPU %/stream':>12} {'arrays/s/stream':>15}"
    print(f"{header} {'lag p99 ms':>10}")
    for run in runs:
        for way, row in run["ways"].items():
            print(
                f"{run['streams']:>7}  {way:<13} {row['cpu_percent_per_stream']:>12} "
                f"{row['arrays_per_s_per_stream']:>15} {row['lag_p99_ms']:>10}"
            )
    print(f"audio reader, resampling on the loop: {audio_us:.1f} us per 20 ms frame")
    write_result(
        RESULT,
        {
            "runs": runs,
            "audio_resample_us_per_frame": round(audio_us, 1),
            "machine": machine_info(load_before, started),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
