"""What ``meshpeer join --record-room`` costs: CPU of the recording process against a
process that only receives (the floor), both in one room of N sending bots.

Loopback only: a ``meshpeer serve`` process, N bots (``meshpeer join``, synthetic video and
a tone), one receive-only ``meshpeer join --video none --audio none`` and one that also
records the room. After a warm-up, CPU per process (from /proc/PID/stat) over a window;
then the recorder is stopped (SIGTERM) and its file measured (duration, frames, size).

    ./dev bench room_recording [--bots 3] [--seconds 30] [--width 640 --height 480 --fps 30]
        [--room-size 1280x720 --room-fps 15]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import av  # noqa: E402

from benchmarks.common import (  # noqa: E402
    cpu_seconds,
    free_port,
    machine_info,
    stop,
    wait_listening,
    write_result,
)

RESULT = REPO / "benchmarks" / "results" / "room_recording.json"


def join(url: str, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "peer", "join", url, "--room", "bench", "--id", name,
            "--quiet", *extra]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bots", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--room-size", default="1280x720")
    parser.add_argument("--room-fps", type=int, default=15)
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.monotonic()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-room-") as tmp:
        port = free_port()
        url = f"ws://127.0.0.1:{port}/ws"
        serve = [sys.executable, "-m", "peer", "serve", "--port", str(port)]
        # The bots and the two recorders share a room: more than --max-peers' default of 8.
        limits = ["--log-level", "WARNING", "--max-peers", str(args.bots + 2)]
        server = subprocess.Popen([*serve, *limits], cwd=REPO)
        stack.callback(stop, server)
        wait_listening(server, port)
        media = ("--width", str(args.width), "--height", str(args.height), "--fps", str(args.fps))
        processes: dict[str, subprocess.Popen[bytes]] = {}

        def start(name: str, *extra: str) -> None:
            processes[name] = subprocess.Popen(join(url, name, *extra), cwd=REPO)
            stack.callback(stop, processes[name])

        for index in range(args.bots):
            start(f"bot{index + 1}", *media)
        path = Path(tmp) / "room.mkv"
        receive_only = ("--video", "none", "--audio", "none")
        start("floor", *receive_only)
        room = ("--record-room-size", args.room_size, "--record-room-fps", str(args.room_fps))
        start("recorder", *receive_only, "--record-room", str(path), *room)
        time.sleep(args.warmup)
        before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
        window_start = time.monotonic()
        time.sleep(args.seconds)
        window = time.monotonic() - window_start
        cpu = {
            name: round(100 * (cpu_seconds(p.pid) - before[name]) / window, 1)
            for name, p in processes.items()
        }
        stop(processes["recorder"])
        with av.open(str(path)) as container:
            duration = (container.duration or 0) / av.time_base
            frames = sum(1 for _ in container.decode(video=0))
        bots = [cpu[f"bot{i + 1}"] for i in range(args.bots)]
        result: dict[str, Any] = {
            "command": "./dev bench room_recording " + " ".join(sys.argv[1:]),
            "bots": args.bots,
            "bot_video": f"{args.width}x{args.height}@{args.fps}",
            "room": f"{args.room_size}@{args.room_fps}",
            "window_s": round(window, 1),
            "cpu_percent_of_a_core": {
                "recorder": cpu["recorder"],
                "receive_only": cpu["floor"],
                "recording_alone": round(cpu["recorder"] - cpu["floor"], 1),
                "bot_mean": round(sum(bots) / len(bots), 1),
            },
            "file": {
                "seconds": round(duration, 2),
                "frames": frames,
                "fps": round(frames / duration, 2) if duration else 0.0,
                "kbps": round(8 * path.stat().st_size / duration / 1000) if duration else 0,
            },
            "machine": machine_info(load_before, started),
        }
        print(result)
        write_result(RESULT, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
