"""Time to first frame, sustained fps and CPU of meshes of `meshpeer join` processes.

Loopback only. For each mesh size, an in-process signaling server and N bots as separate
processes (`python -m peer join ... --stats-json`), started one after another (each once
the previous one has joined). For every ordered pair, "first frame" is the time from the
later of the two joins to the receiver's first decoded video frame from the sender. After
a warm-up, fps (from the bots' stats) and CPU per process (from /proc/PID/stat) are taken
over a fixed window.

A baseline row measures the same thing without the agent: two aiortc RTCPeerConnections in
this process, offer/answer passed directly, the same synthetic source: what aiortc itself
needs. The agent's in-process pair (through the server) is next to it.

    ./dev bench peer_first_frame [--sizes 2,3,4,6] [--width 640 --height 480 --fps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import last_json_line  # noqa: E402
from peer import events as ev  # noqa: E402
from peer.agent import Agent  # noqa: E402
from peer.media.sources import VideoSettings, open_local_media  # noqa: E402
from signaling.server import SignalingServer  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


async def start_server() -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(SignalingServer().app(), access_log=None, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"ws://127.0.0.1:{runner.addresses[0][1]}/ws"


async def wait_until(condition: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return False


async def mesh(size: int, settings: VideoSettings, warmup: float, window: float) -> dict[str, Any]:
    runner, url = await start_server()
    folder = Path(tempfile.mkdtemp(prefix="meshpeer-bench-"))
    procs: list[asyncio.subprocess.Process] = []
    files = [folder / f"bot{i + 1}.jsonl" for i in range(size)]
    try:
        for index in range(size):
            name = f"bot{index + 1}"
            command = [
                sys.executable, "-m", "peer", "join", url, "--room", f"bench{size}",
                "--id", name, "--quiet", "--stats-json", str(files[index]),
                "--stats-interval", "0.5", "--width", str(settings.width),
                "--height", str(settings.height), "--fps", str(settings.fps),
            ]  # fmt: skip
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=REPO, stdout=asyncio.subprocess.DEVNULL
            )
            procs.append(proc)
            if not await wait_until(lambda f=files[index]: last_json_line(f) is not None, 30):
                raise RuntimeError(f"{name} did not start")
        # everyone connected to everyone, then warm up
        await wait_until(
            lambda: all(
                (r := last_json_line(f)) is not None
                and len(r["peers"]) == size - 1
                and all(p["first_frame_s"] is not None for p in r["peers"])
                for f in files
            ),
            30,
        )
        await asyncio.sleep(warmup)
        load = os.getloadavg()[0]  # other work on the machine skews everything: say how much
        cpu_start = [cpu_seconds(p.pid) for p in procs]
        t0 = time.monotonic()
        await asyncio.sleep(window)
        cpu_used = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu_start, strict=True)]
        elapsed = time.monotonic() - t0
        records = [last_json_line(f) for f in files]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await runner.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    joined = {r["peer"]: r["joined_at"] for r in records if r is not None}
    firsts: list[float] = []
    fps: list[float] = []
    connected = 0
    for record in records:
        if record is None:
            continue
        for peer in record["peers"]:
            if peer["state"] == "connected":
                connected += 1
            fps.append(peer["fps_in"])
            if peer["first_frame_s"] is not None and peer["peer"] in joined:
                at = record["joined_at"] + peer["first_frame_s"]
                firsts.append(at - max(record["joined_at"], joined[peer["peer"]]))
    cpu = [100 * c / elapsed for c in cpu_used]
    newcomer, answerer = step_breakdown(records)
    return {
        "bots": size,
        "resolution": f"{settings.width}x{settings.height}@{settings.fps}",
        "pairs": size * (size - 1),
        "connected_pairs": connected,
        "first_frame_median_s": round(statistics.median(firsts), 3) if firsts else None,
        "first_frame_max_s": round(max(firsts), 3) if firsts else None,
        "fps_median": round(statistics.median(fps), 1) if fps else 0.0,
        "fps_min": round(min(fps), 1) if fps else 0.0,
        "cpu_percent_per_process_mean": round(statistics.mean(cpu), 1),
        "cpu_percent_per_process_max": round(max(cpu), 1),
        "load_average_1min": round(load, 2),
        "newcomer_steps_s": newcomer,
        "answerer_steps_s": answerer,
    }


def step_breakdown(
    records: list[dict[str, Any] | None],
) -> tuple[dict[str, float], dict[str, float]]:
    """Median time of each negotiation step after the last bot's join, on both sides.

    The last bot offers to everyone (newcomer); the others answer it (answerer).
    """
    last = records[-1]
    if last is None:
        return {}, {}
    t0 = last["joined_at"]
    offer_side: dict[str, list[float]] = {"peer-list": [last["peer_list_s"] or 0.0]}
    for peer in last["peers"]:
        for step, at in peer["steps"].items():
            offer_side.setdefault(step, []).append(at)
    answer_side: dict[str, list[float]] = {}
    for record in records[:-1]:
        if record is None:
            continue
        for peer in record["peers"]:
            if peer["peer"] != last["peer"]:
                continue
            for step, at in peer["steps"].items():
                answer_side.setdefault(step, []).append(record["joined_at"] + at - t0)
    med = {k: round(statistics.median(v), 4) for k, v in offer_side.items()}
    med2 = {k: round(statistics.median(v), 4) for k, v in answer_side.items()}
    return med, med2


async def raw_aiortc_pair(settings: VideoSettings) -> float:
    """Offer to first decoded frame with two bare RTCPeerConnections, no signaling."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    media = open_local_media("synthetic", "tone", label="raw", settings=settings)
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    got = asyncio.get_running_loop().create_future()
    readers: list[asyncio.Future[None]] = []

    def on_track(track: Any) -> None:
        if track.kind == "video":

            async def read() -> None:
                await track.recv()
                if not got.done():
                    got.set_result(time.monotonic())

            readers.append(asyncio.ensure_future(read()))

    b.on("track", on_track)
    try:
        start = time.monotonic()
        if media.video is not None:
            a.addTrack(media.video)
        if media.audio is not None:
            a.addTrack(media.audio)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        first: float = await asyncio.wait_for(got, 20)
        return first - start
    finally:
        for reader in readers:
            reader.cancel()
        await a.close()
        await b.close()
        media.stop()


async def agent_pair(settings: VideoSettings) -> tuple[float, float]:
    """The same with two agents in this process, through the signaling server.

    Returns (from join, from peer-list): the second leaves out opening the WebSocket.
    """
    runner, url = await start_server()
    medias = [open_local_media("synthetic", "tone", label=n, settings=settings) for n in "ab"]
    first = asyncio.get_running_loop().create_future()
    a = Agent(url, room="pair", peer_id="a", media=medias[0], stats_interval=None)
    b = Agent(url, room="pair", peer_id="b", media=medias[1], stats_interval=None)

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.FirstFrame) and event.kind == "video" and not first.done():
            first.set_result(time.monotonic())

    b.add_listener(on_event)
    try:
        await a.join()
        start = time.monotonic()
        await b.join()
        done: float = await asyncio.wait_for(first, 20)
        in_room = b.in_room_at if b.in_room_at is not None else start
        return done - start, done - in_room
    finally:
        await b.leave()
        await a.leave()
        for media in medias:
            media.stop()
        await runner.cleanup()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = VideoSettings(args.width, args.height, args.fps)
    raw: list[float] = []
    pair: list[float] = []
    pair_in_room: list[float] = []
    for _ in range(args.repeat):  # interleaved, so load changes hit both alike
        raw.append(await raw_aiortc_pair(settings))
        from_join, from_list = await agent_pair(settings)
        pair.append(from_join)
        pair_in_room.append(from_list)
    baseline = {
        "raw_aiortc_pair_median_s": round(statistics.median(raw), 3),
        "agent_pair_in_process_median_s": round(statistics.median(pair), 3),
        "agent_pair_from_peer_list_median_s": round(statistics.median(pair_in_room), 3),
        "agent_overhead_s": round(statistics.median(pair) - statistics.median(raw), 3),
        "frame_interval_s": round(1 / args.fps, 3),
        "repeat": args.repeat,
    }
    rows = []
    for size in args.sizes:
        rows.append(await mesh(size, settings, args.warmup, args.window))
        print_row(rows[-1])
    if args.small:
        small = VideoSettings(320, 240, 15)
        for size in args.sizes:
            if size >= 4:
                rows.append(await mesh(size, small, args.warmup, args.window))
                print_row(rows[-1])
    return {"machine_cpus": os.cpu_count(), "baseline": baseline, "meshes": rows}


HEADER = (
    f"{'bots':>4} {'resolution':>14} {'connected':>9} {'first frame med/max s':>22} "
    f"{'fps med/min':>12} {'CPU%/proc mean/max':>19} {'load':>5}"
)


def print_row(row: dict[str, Any]) -> None:
    first = f"{row['first_frame_median_s']}/{row['first_frame_max_s']}"
    print(
        f"{row['bots']:>4} {row['resolution']:>14} "
        f"{row['connected_pairs']:>4}/{row['pairs']:<4} {first:>22} "
        f"{row['fps_median']:>5}/{row['fps_min']:<6} "
        f"{row['cpu_percent_per_process_mean']:>9}/{row['cpu_percent_per_process_max']:<9} "
        f"{row['load_average_1min']:>5}",
        flush=True,
    )


def _steps(steps: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in sorted(steps.items(), key=lambda kv: kv[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2,3,4,6", help="mesh sizes (default 2,3,4,6)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=5.0, help="seconds of fps/CPU measure")
    parser.add_argument("--repeat", type=int, default=10, help="runs of the in-process pairs")
    parser.add_argument(
        "--no-small", dest="small", action="store_false", help="skip the 320x240@15 rows"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "peer_first_frame.json"
    )
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    print(HEADER, flush=True)
    results = asyncio.run(run(args))
    for row in results["meshes"]:
        print(f"\n{row['bots']} bots {row['resolution']}, steps after the last join (median s):")
        print("  newcomer (offers):  " + _steps(row["newcomer_steps_s"]))
        print("  others (answer):    " + _steps(row["answerer_steps_s"]))
    base = results["baseline"]
    print(
        "\nin-process pair, offer to first frame: "
        f"raw aiortc {base['raw_aiortc_pair_median_s']} s, "
        f"agent via server {base['agent_pair_in_process_median_s']} s "
        f"({base['agent_pair_from_peer_list_median_s']} s from peer-list) "
        f"(overhead {base['agent_overhead_s']} s; one frame is {base['frame_interval_s']} s)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
