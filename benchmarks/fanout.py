"""One sender, 1..8 receive-only peers: the sender's CPU with shared against per-peer encoding.

For each receiver count, in the same run and alternating: a ``meshpeer join`` sender
(synthetic 640x480@30 and the tone, ``--encoding shared`` or ``per-peer``) and N
``meshpeer join --video none --audio none`` receivers, each its own process, through a
local signaling server. Once every receiver decodes, it waits ``--settle`` seconds, then
measures over ``--window`` seconds the sender's CPU (utime + stime from /proc, all its
threads, as % of one core) and each receiver's received fps (its ``--stats-json``).
Targets (shared): at most 1.3x the one-receiver CPU with 4 receivers, 1.6x with 8.

    ./dev bench fanout
    ./dev bench fanout --receivers 1,2,4 --rounds 1 --window 5     # a short look
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    cpu_seconds,
    free_port,
    last_json_line,
    start_signaling,
    stop_all,
    wait_listening,
    write_result,
)

RESULTS = ROOT / "benchmarks" / "results"
MODES = ("per-peer", "shared")
#: Shared-encoding CPU allowed, relative to one receiver.
TARGETS = {4: 1.3, 8: 1.6}


def join(url: str, room: str, name: str, stats: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "peer", "join", url, "--room", room, "--id", name, "--quiet",
        "--stats-json", str(stats), "--stats-interval", "1", *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def receiver_fps(stats: Path) -> float:
    record = last_json_line(stats)
    if not record:
        return 0.0
    return sum(p["fps_in"] for p in record["peers"] if p["peer"] == "sender")


def measure(
    url: str, mode: str, receivers: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    room = f"fanout-{mode}-{receivers}-{time.monotonic_ns()}"
    sender = join(
        url, room, "sender", work / "sender.jsonl", "--encoding", mode,
        "--width", str(args.width), "--height", str(args.height), "--fps", str(args.fps),
    )  # fmt: skip
    stats = [work / f"{room}-r{i}.jsonl" for i in range(receivers)]
    procs = [sender]
    try:
        for i, path in enumerate(stats):
            procs.append(join(url, room, f"r{i}", path, "--video", "none", "--audio", "none"))
        deadline = time.monotonic() + 60
        while not all(receiver_fps(path) > 0 for path in stats):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode} x{receivers}: receivers got no video in 60 s")
            if any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{mode} x{receivers}: a peer exited")
            time.sleep(0.2)
        time.sleep(args.settle)
        cpu, wall = cpu_seconds(sender.pid), time.monotonic()
        fps_samples: list[list[float]] = []
        while time.monotonic() - wall < args.window:
            time.sleep(1.0)
            fps_samples.append([receiver_fps(path) for path in stats])
        cpu, wall = cpu_seconds(sender.pid) - cpu, time.monotonic() - wall
    finally:
        stop_all(procs[1:])
        stop_all(procs[:1])
    per_receiver = [statistics.fmean(column) for column in zip(*fps_samples, strict=True)]
    return {
        "mode": mode,
        "receivers": receivers,
        "sender_cpu_percent": round(100 * cpu / wall, 1),
        "fps_min": round(min(per_receiver), 1),
        "fps_mean": round(statistics.fmean(per_receiver), 1),
        "fps_per_receiver": [round(f, 1) for f in per_receiver],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receivers", default="1,2,4,8", help="receiver counts (default 1,2,4,8)")
    parser.add_argument("--modes", default=",".join(MODES), help="default per-peer,shared")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each case; medians kept")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--output", type=Path, default=RESULTS / "fanout.json")
    args = parser.parse_args()
    counts = [int(n) for n in args.receivers.split(",")]
    modes = tuple(args.modes.split(","))
    port = free_port()
    # The sender and its receivers share a room: more than --max-peers' default of 8.
    server = start_signaling(port, "--max-peers", str(max(counts) + 1))
    runs: list[dict[str, Any]] = []
    try:
        wait_listening(server, port, 20)
        url = f"ws://127.0.0.1:{port}/ws"
        with tempfile.TemporaryDirectory(prefix="meshpeer-fanout-") as work:
            for round_ in range(args.rounds):
                for receivers in counts:
                    for mode in modes if round_ % 2 == 0 else modes[::-1]:
                        run = measure(url, mode, receivers, args, Path(work))
                        print(
                            f"round {round_ + 1}: {mode:8s} x{receivers}: sender "
                            f"{run['sender_cpu_percent']:5.1f}% of a core, receivers "
                            f"{run['fps_min']}..{max(run['fps_per_receiver'])} fps",
                            file=sys.stderr,
                            flush=True,
                        )
                        runs.append(run)
    finally:
        server.terminate()
        server.wait(timeout=10)

    def median(mode: str, receivers: int, key: str) -> float | None:
        values = [r[key] for r in runs if r["mode"] == mode and r["receivers"] == receivers]
        return round(statistics.median(values), 1) if values else None

    table = []
    base = median("shared", counts[0], "sender_cpu_percent")
    for n in counts:
        shared = median("shared", n, "sender_cpu_percent")
        table.append(
            {
                "receivers": n,
                "per_peer_cpu": median("per-peer", n, "sender_cpu_percent"),
                "shared_cpu": shared,
                "shared_vs_first": round(shared / base, 2) if shared and base else None,
                "target": TARGETS.get(n),
                "per_peer_fps_min": median("per-peer", n, "fps_min"),
                "shared_fps_min": median("shared", n, "fps_min"),
            }
        )
    print()
    print(
        f"sender: synthetic {args.width}x{args.height}@{args.fps} + tone; "
        f"{os.cpu_count()} cores; medians of {args.rounds} rounds"
    )
    print(
        "| receivers | per-peer CPU % | shared CPU % | shared vs 1 receiver | target "
        "| per-peer fps (min) | shared fps (min) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in table:
        target = f"<= {row['target']}x" if row["target"] else "-"
        print(
            f"| {row['receivers']} | {row['per_peer_cpu']} | {row['shared_cpu']} | "
            f"{row['shared_vs_first']}x | {target} | {row['per_peer_fps_min']} | "
            f"{row['shared_fps_min']} |"
        )
    met = all(
        row["shared_vs_first"] is not None and row["shared_vs_first"] <= row["target"]
        for row in table
        if row["target"] and counts[0] == 1
    )
    print(f"\nshared-encoding CPU targets met: {'yes' if met else 'NO'}")
    result = {
        "settings": vars(args) | {"output": str(args.output)},
        "load_average": os.getloadavg(),
        "table": table,
        "targets_met": met,
        "runs": runs,
    }
    write_result(args.output, result)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
