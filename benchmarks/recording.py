"""The recorder's CPU per 640x480@30 stream: packets to file, transcoding, and just receiving.

N ``meshpeer join --video synthetic --audio tone --send-only`` senders (640x480@30, each
its own process; send-only, so they send each other nothing and 8 of them fit on 2 cores)
meet through a local signaling server; for each N (``--streams``, default 1,4,8) one
recording process joins in turn, alternating the order between rounds: ``packets``
(``--record DIR``: packets to file, no decoding), ``transcode`` (``--record DIR
--record-transcode``: decode and encode with libx264) and ``receive`` (no sinks: the
floor). Once it receives every sender, it waits ``--settle`` seconds and measures over
``--window`` seconds the RTP packets it lost, its CPU (utime + stime from /proc, all
threads, % of one core), per stream and per received frame (the senders may not keep 30
fps on a small machine), the fps it receives from each sender against the configured
rate, and on leaving, from its own counters (its log), the packets or frames it dropped.
Before the recorders of 4 senders, 4 senders that also receive (a mesh: they show
nothing, so decode nothing) are measured on their own, each sender's CPU against one
sender's with the receive-only peer.

Targets (issue 19): packets to file <= 25% of the transcoding recorder's CPU per stream
(per frame where the transcoder cannot keep 95% of the rate: it then spends its CPU on the
few frames it handles) and <= 1.5x the receive-only floor; one recorder holds 8 streams at
real time, dropping nothing; a sender in a mesh of 4 costs <= 1.5x one sending to one
receive-only peer. Writes ``benchmarks/results/recording.json``.

    ./dev bench recording
    ./dev bench recording --streams 1,4 --rounds 1 --window 5     # a short look
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    cpu_seconds,
    free_port,
    last_json_line,
    machine_info,
    start_signaling,
    stop_all,
    wait_listening,
    write_result,
)

RESULTS = ROOT / "benchmarks" / "results"
#: The recording process's flags per mode ({dir}: a fresh folder).
MODES = {
    "packets": ("--record", "{dir}"),
    "transcode": ("--record", "{dir}", "--record-transcode"),
    "receive": (),
}
#: Packets to file against transcoding, and against the receive-only floor, per stream.
MAX_VS_TRANSCODE = 0.25
MAX_VS_FLOOR = 1.5
#: A sender in a mesh of MESH against one sending to one receive-only peer.
MESH = 4
MAX_MESH = 1.5
#: Real time: the recorder receives each sender at this share of what the others get.
REAL_TIME = 0.95
#: Seconds for every peer to receive every sender (8 senders on 2 busy cores are slow).
WAIT = 180
#: The recorders' own counters, logged when each file is finished.
DROPPED = (
    re.compile(r"recorded \S+: \d+ packets, \d+ skipped .*, dropped (\d+) video and (\d+) audio"),
    re.compile(r"recorded \S+: \d+ video and \d+ audio frames, dropped (\d+)/(\d+)"),
)


@dataclass
class Room:
    """One room's senders and where their stats go."""

    url: str
    name: str
    work: Path
    senders: list[subprocess.Popen[bytes]]
    stats: list[Path]


def join(room: Room, peer: str, *extra: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    stats = room.work / f"{room.name}-{peer}.jsonl"
    command = [
        sys.executable, "-m", "peer", "join", room.url, "--room", room.name, "--id", peer,
        "--quiet", "--stats-json", str(stats), "--stats-interval", "1", *extra,
    ]  # fmt: skip
    if log is None:
        return subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    with log.open("wb") as err:
        return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)


def received(stats: Path) -> dict[str, tuple[float, int]]:
    """(fps, frames so far) received from each peer, from the newest stats line."""
    record = last_json_line(stats)
    if not record:
        return {}
    return {p["peer"]: (p["fps_in"], p["frames_in"]) for p in record["peers"]}


def packets_lost(stats: Path) -> int:
    """RTP packets the recorder never got, summed over its peers (newest stats line)."""
    record = last_json_line(stats)
    return sum(p["packets_lost"] or 0 for p in record["peers"]) if record else 0


def wait_receiving(path: Path, peers: set[str], procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + WAIT
    while not peers <= {p for p, (fps, _) in received(path).items() if fps > 0}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.name}: no video from all of {sorted(peers)} in {WAIT} s")
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"{path.name}: a peer exited")
        time.sleep(0.3)


def start_room(
    url: str, streams: int, args: argparse.Namespace, work: Path, *, send_only: bool
) -> Room:
    """``streams`` senders, joined; with ``send_only=False`` a mesh, once each receives all."""
    name = f"rec-{streams}-{time.monotonic_ns()}"
    room = Room(url, name, work, [], [])
    size = ("--width", str(args.width), "--height", str(args.height), "--fps", str(args.fps))
    flags = ("--video", "synthetic", "--audio", "tone", *size, *(("--send-only",) * send_only))
    for i in range(streams):
        peer = f"s{i + 1}"
        room.senders.append(join(room, peer, *flags))
        room.stats.append(work / f"{name}-{peer}.jsonl")
    try:
        for i, path in enumerate(room.stats if streams > 1 and not send_only else []):
            others = {f"s{j + 1}" for j in range(streams) if j != i}
            wait_receiving(path, others, room.senders)
    except BaseException:
        stop_all(room.senders, 30)
        raise
    return room


def window(
    pids: list[int], stats: Path, seconds: float
) -> tuple[list[float], float, dict[str, tuple[float, int]], dict[str, tuple[float, int]]]:
    """CPU % of one core of each of ``pids`` over ``seconds``, the wall time, and what
    ``stats`` said it received at the start and the end."""
    before, first, wall = [cpu_seconds(p) for p in pids], received(stats), time.monotonic()
    time.sleep(seconds)
    after, last, wall = [cpu_seconds(p) for p in pids], received(stats), time.monotonic() - wall
    return [100 * (b - a) / wall for a, b in zip(before, after, strict=True)], wall, first, last


def mesh_cost(room: Room, args: argparse.Namespace) -> tuple[float, float]:
    """The senders' mean CPU % in their mesh (no recorder yet), and the lowest fps the
    first sender received from another (a starved mesh is no cost comparison)."""
    time.sleep(args.settle)
    cpu, _, _, last = window([p.pid for p in room.senders], room.stats[0], args.window)
    return round(statistics.fmean(cpu), 1), min((fps for fps, _ in last.values()), default=0.0)


def measure(room: Room, mode: str, args: argparse.Namespace, index: int) -> dict[str, Any]:
    peer = f"rec-{mode}-{index}"
    out = room.work / peer
    flags = [f.format(dir=out) for f in MODES[mode]]
    log = room.work / f"{room.name}-{peer}.log"
    recorder = join(
        room, peer, "--video", "none", "--audio", "none", *flags, "--log-level", "INFO", log=log
    )
    stats = room.work / f"{room.name}-{peer}.jsonl"
    senders = {f"s{i + 1}" for i in range(len(room.senders))}
    try:
        wait_receiving(stats, senders, [recorder, *room.senders])
        time.sleep(args.settle)
        lost_before = packets_lost(stats)
        cpu, wall, first, last = window([recorder.pid, room.senders[0].pid], stats, args.window)
        lost = packets_lost(stats) - lost_before
    finally:
        stop_all([recorder], 30)
    # A sender the recorder lost (a connection that failed under load) counts as 0 fps.
    fps = {p: last.get(p, (0.0, 0))[0] for p in senders}
    counted = [last.get(p, (0.0, 0))[1] - first.get(p, (0.0, 0))[1] for p in senders]
    # A counter that went back: the connection was made again, its frames unknown.
    frames = sum(counted) if min(counted) >= 0 else 0
    dropped = [0, 0]
    for line in log.read_text(errors="replace").splitlines():
        for pattern in DROPPED:
            if match := pattern.search(line):
                dropped = [dropped[0] + int(match[1]), dropped[1] + int(match[2])]
    streams = len(senders)
    return {
        "mode": mode,
        "streams": streams,
        "cpu_percent": round(cpu[0], 1),
        "cpu_per_stream": round(cpu[0] / streams, 2),
        "ms_per_frame": round(1000 * cpu[0] / 100 * wall / frames, 3) if frames else None,
        "sender_cpu_percent": round(cpu[1], 1),
        "fps_min": round(min(fps.values()), 1),
        "fps_mean": round(statistics.fmean(fps.values()), 1),
        # The senders receive nothing: the configured rate is what each one sends.
        "real_time": min(round(fps[p] / args.fps, 3) for p in senders),
        "packets_lost": lost,
        "dropped_video": dropped[0],
        "dropped_audio": dropped[1],
    }


def median(runs: list[dict[str, Any]], mode: str, streams: int, key: str) -> Any:
    values = [r[key] for r in runs if r["mode"] == mode and r["streams"] == streams]
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,4,8", help="sender counts (default 1,4,8)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each case; medians kept")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--output", type=Path, default=RESULTS / "recording.json")
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    load_before, started = os.getloadavg(), time.monotonic()
    port = free_port()
    # Senders and recorders share a room: more than --max-peers' default of 8.
    server = start_signaling(port, "--max-peers", str(max(counts) + 4))
    runs: list[dict[str, Any]] = []
    mesh: float | None = None
    mesh_fps = 0.0
    failures: dict[int, str] = {}  # sender counts whose room never formed, and why
    try:
        wait_listening(server, port, 20)
        url = f"ws://127.0.0.1:{port}/ws"
        with tempfile.TemporaryDirectory(prefix="meshpeer-recording-") as work:
            for streams in counts:
                try:
                    if streams == MESH:
                        room = start_room(url, streams, args, Path(work), send_only=False)
                        try:
                            mesh, mesh_fps = mesh_cost(room, args)
                        finally:
                            stop_all(room.senders, 30)
                        print(
                            f"mesh of {MESH}: {mesh}% per sender, receiving >= {mesh_fps} fps",
                            file=sys.stderr,
                            flush=True,
                        )
                    room = start_room(url, streams, args, Path(work), send_only=True)
                except RuntimeError as exc:  # the machine cannot carry this many senders
                    failures[streams] = str(exc)
                    print(f"x{streams}: {exc}", file=sys.stderr, flush=True)
                    continue
                try:
                    for round_ in range(args.rounds):
                        order = list(MODES) if round_ % 2 == 0 else list(MODES)[::-1]
                        for mode in order:
                            try:
                                run = measure(room, mode, args, len(runs))
                            except RuntimeError as exc:
                                failures[streams] = f"{mode}: {exc}"
                                print(f"x{streams} {mode}: {exc}", file=sys.stderr, flush=True)
                                continue
                            print(
                                f"round {round_ + 1}: {mode:9s} x{streams}: "
                                f"{run['cpu_percent']:5.1f}% of a core, "
                                f"{run['cpu_per_stream']:.2f}% per stream, fps "
                                f"{run['fps_min']}..{run['fps_mean']}, dropped "
                                f"{run['dropped_video']}/{run['dropped_audio']}",
                                file=sys.stderr,
                                flush=True,
                            )
                            runs.append(run)
                finally:
                    stop_all(room.senders, 30)
    finally:
        server.terminate()
        server.wait(timeout=10)

    table = []
    for n in counts:
        row: dict[str, Any] = {"streams": n}
        for mode in MODES:
            row[mode] = median(runs, mode, n, "cpu_per_stream")
            row[f"{mode}_ms_per_frame"] = median(runs, mode, n, "ms_per_frame")
            row[f"{mode}_fps_min"] = median(runs, mode, n, "fps_min")
        # A transcoder that fell behind spends its CPU on the few frames it handles: per
        # stream it looks cheap; per frame is what real time would cost it.
        behind = (row["transcode_fps_min"] or 0) < REAL_TIME * args.fps
        row["vs_transcode_per"] = "frame" if behind else "stream"
        unit = "_ms_per_frame" if behind else ""
        mine, theirs = row[f"packets{unit}"], row[f"transcode{unit}"]
        row["vs_transcode"] = round(mine / theirs, 2) if mine and theirs else None
        packets, floor = row["packets"], row["receive"]
        row["vs_floor"] = round(packets / floor, 2) if packets and floor else None
        table.append(row)
    top = max(counts)
    held = [r for r in runs if r["mode"] == "packets" and r["streams"] == top]
    holds = bool(held) and all(
        r["dropped_video"] == r["dropped_audio"] == r["packets_lost"] == 0
        and (r["real_time"] or 0) >= REAL_TIME
        for r in held
    )
    single = median(runs, "receive", 1, "sender_cpu_percent") if 1 in counts else None
    mesh_ratio = round(mesh / single, 2) if mesh and single else None
    targets = {
        f"packets <= {MAX_VS_TRANSCODE:.0%} of transcoding per stream": all(
            r["vs_transcode"] is not None and r["vs_transcode"] <= MAX_VS_TRANSCODE for r in table
        ),
        f"packets <= {MAX_VS_FLOOR}x the receive-only floor per stream": all(
            r["vs_floor"] is not None and r["vs_floor"] <= MAX_VS_FLOOR for r in table
        ),
        f"one recorder holds {top} streams at real time, dropping nothing": holds,
        f"a sender in a mesh of {MESH} <= {MAX_MESH}x one sending to one receiver": (
            mesh_ratio is not None and mesh_ratio <= MAX_MESH and mesh_fps >= REAL_TIME * args.fps
        ),
    }
    machine = machine_info(load_before, started)
    print()
    print(
        f"recorder CPU per {args.width}x{args.height}@{args.fps} stream (% of one core), "
        f"medians of {args.rounds} rounds; {machine['cores']} cores, load average "
        f"{load_before[0]:.1f} before, {machine['loadavg_after'][0]:.1f} after"
    )
    print(
        "| streams | packets to file | transcoding | receive only | packets vs transcoding "
        "| packets vs floor | ms per frame: packets / transcoding / receive | fps min: "
        "packets / transcoding / receive |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in table:
        ms = " / ".join(str(row[f"{m}_ms_per_frame"]) for m in MODES)
        fps = " / ".join(str(row[f"{m}_fps_min"]) for m in MODES)
        print(
            f"| {row['streams']} | {row['packets']} | {row['transcode']} | {row['receive']} | "
            f"{row['vs_transcode']} (per {row['vs_transcode_per']}) | {row['vs_floor']}x | "
            f"{ms} | {fps} |"
        )
    print()
    for r in held:
        print(
            f"packets x{top}: received {r['real_time']} of the rate, dropped "
            f"{r['dropped_video']} video / {r['dropped_audio']} audio packets, "
            f"{r['packets_lost']} RTP packets lost in the window"
        )
    print(f"sender with one receive-only peer: {single}%; in a mesh of {MESH}: {mesh}%", end="")
    print(f" ({mesh_ratio}x; received >= {mesh_fps} fps, judged from {REAL_TIME * args.fps:g})")
    for streams, why in failures.items():
        print(f"x{streams} not measured: {why}")
    for name, met in targets.items():
        print(f"{'met' if met else 'NOT met'}: {name}")
    result = {
        "settings": vars(args) | {"output": str(args.output)},
        "machine": machine,
        "table": table,
        "mesh": {
            "single_receiver_cpu": single,
            "mesh_cpu": mesh,
            "ratio": mesh_ratio,
            "mesh_fps_min": mesh_fps,
        },
        "targets": targets,
        "failures": failures,
        "runs": runs,
    }
    write_result(args.output, result)
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
