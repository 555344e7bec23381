"""Join cost with access tokens on and off, in the same run: server CPU µs per join.

Each run starts a fresh ``python -m signaling`` process on a free 127.0.0.1 port, with or
without ``--auth-secret-file``, and joins it ``--joins`` times from this process: a client
connects, sends ``join`` (with its token when auth is on, minted beforehand), waits for its
``peer-list``; clients go in rooms of ``--room-size`` (so joins also cost ``peer-joined``
broadcasts), and a room's clients leave together once it is full. What is measured is the
server process' CPU time (from /proc) over the whole run divided by the joins: WebSocket
handshake, join, token check, broadcasts and leave. Runs alternate off/on, ``--repeats``
times each; medians are reported. Also the token check alone (µs per verify, in-process):
in a tight loop, and after sleeping 2 ms as a server does between joins.

    ./dev bench join_cost            # about 40 seconds
    ./dev bench join_cost --quick    # smoke run

Prints a table and writes ``benchmarks/results/join_cost.json``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import free_port, wait_listening, write_result  # noqa: E402
from signaling.auth import TokenVerifier, mint_token  # noqa: E402
from signaling.protocol import PeerId, RoomId  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "join_cost.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SECRET = os.urandom(32).hex().encode()
#: Most server CPU per join with tokens on, as a multiple of that with them off.
TARGET_RATIO = 1.35
#: Seconds asleep before each token check of the "after idle" figure.
IDLE = 0.002


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``, in nanoseconds' resolution (schedstat), where
    /proc/PID/stat counts 10 ms ticks."""
    tasks = Path(f"/proc/{pid}/task")
    try:
        total = sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir())
        return total / 1e9
    except (OSError, ValueError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextmanager
def server(auth: bool, secret_file: Path, room_size: int) -> Iterator[tuple[int, int]]:
    port = free_port()
    command = [sys.executable, "-m", "signaling", "--port", str(port), "--log-level", "WARNING"]
    command += ["--max-peers", str(room_size)]
    command += ["--ip-connections", "0", "--ip-connects-per-minute", "0", "--rate", "100000"]
    if auth:
        command += ["--auth-secret-file", str(secret_file)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_listening(proc, port, 20)
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def drive(port: int, joins: int, room_size: int, auth: bool) -> float:
    """Join ``joins`` clients, ``room_size`` per room; wall seconds."""
    url = f"ws://127.0.0.1:{port}/ws"
    names = [(f"room-{i // room_size}", f"peer-{i}") for i in range(joins)]
    tokens = [mint_token(SECRET, room, peer) if auth else None for room, peer in names]
    started = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        room: list[aiohttp.ClientWebSocketResponse] = []
        for (room_name, peer), token in zip(names, tokens, strict=True):
            ws = await http.ws_connect(url)
            join: dict[str, Any] = {"type": "join", "peerId": peer, "room": room_name}
            if token is not None:
                join["token"] = token
            await ws.send_str(json.dumps(join))
            reply = json.loads((await ws.receive()).data)
            if reply.get("type") != "peer-list":
                raise RuntimeError(f"join refused: {reply}")
            room.append(ws)
            if len(room) == room_size:
                await asyncio.gather(*(w.close() for w in room))
                room = []
        await asyncio.gather(*(w.close() for w in room))
    return time.perf_counter() - started


def measure(auth: bool, joins: int, room_size: int, secret_file: Path) -> dict[str, float]:
    with server(auth, secret_file, room_size) as (pid, port):
        asyncio.run(drive(port, 20, room_size, auth))  # warm-up: imports, first allocations
        before = cpu_seconds(pid)
        wall = asyncio.run(drive(port, joins, room_size, auth))
        time.sleep(0.3)  # the last leaves
        cpu = cpu_seconds(pid) - before
    return {"cpu_us_per_join": cpu / joins * 1e6, "wall_ms_per_join": wall / joins * 1e3}


def verify_cost(n: int, pause: float = 0.0) -> float:
    """Median µs of one token check, in a tight loop, or after ``pause`` seconds asleep as a
    server is between joins (other processes run meanwhile, and caches go cold)."""
    verifier = TokenVerifier(SECRET)
    tokens = [mint_token(SECRET, "lobby", f"peer-{i}") for i in range(n)]
    times = []
    for i, token in enumerate(tokens):
        if pause:
            time.sleep(pause)
        started = time.perf_counter()
        verifier.admit(token, RoomId("lobby"), PeerId(f"peer-{i}"), time.time())
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=1000, help="joins per run")
    parser.add_argument("--room-size", type=int, default=8, help="clients per room")
    parser.add_argument("--repeats", type=int, default=5, help="runs per setting")
    parser.add_argument("--quick", action="store_true", help="smoke run (numbers mean little)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.joins, args.repeats = 100, 1
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        secret_file = Path(tmp) / "secret"
        secret_file.write_bytes(SECRET)
        for repeat in range(args.repeats):
            for setting in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                result = measure(setting == "on", args.joins, args.room_size, secret_file)
                runs[setting].append(result)
                print(
                    f"run {repeat + 1}/{args.repeats} auth {setting}: "
                    f"{result['cpu_us_per_join']:.0f} µs CPU, "
                    f"{result['wall_ms_per_join']:.2f} ms wall per join",
                    file=sys.stderr,
                )
    medians = {
        setting: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for setting, results in runs.items()
    }
    ratio = medians["on"]["cpu_us_per_join"] / medians["off"]["cpu_us_per_join"]
    verify, verify_idle = verify_cost(5000), verify_cost(500, IDLE)
    print()
    print("| auth | server CPU µs per join | wall ms per join (client side) |")
    print("|---|---|---|")
    for setting in ("off", "on"):
        m = medians[setting]
        print(f"| {setting} | {m['cpu_us_per_join']:.0f} | {m['wall_ms_per_join']:.2f} |")
    print()
    print(f"auth on / off, server CPU per join: {ratio:.3f} (target <= {TARGET_RATIO})")
    print(f"token check alone: {verify:.1f} µs, {verify_idle:.1f} µs after {IDLE * 1e3:g} ms idle")
    result = {
        "settings": vars(args) | {"output": str(args.output)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": os.getloadavg(),
        "runs": runs,
        "medians": medians,
        "ratio_cpu_on_off": ratio,
        "verify_us": verify,
        "verify_after_idle_us": verify_idle,
    }
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
