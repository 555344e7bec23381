"""What connections cost a node when they are idle or nearly so: the figures behind
docs/several-nodes.md.

One node with ``--redis-url`` (its own ``redis-server`` on a free port). ``sigload`` joins
``--clients`` clients in rooms of ``--per-room`` and keeps them connected for
``--duration`` seconds, each sending ``rate`` messages a second to a random room-mate. Runs,
each with a fresh node:

- heartbeat 5 s (the default) and 30 s, at 0.05 msg/s per client: the difference is what
  the pings cost;
- heartbeat 30 s at 0.05, 0.5 and 2 msg/s per client: what a message costs when traffic is
  sparse (each one its own wake-up of the event loop, its own reads and writes), far from
  the cost per message under load (``./dev bench cluster``).

Measured: the node's RSS before any client and once all are in (KiB per connection); the
node's CPU once all are in (% of a core, µs per connection per second, µs per message
delivered); redis-server's CPU and ``used_memory`` per member; the join time.

Prints a table and writes ``benchmarks/results/capacity.json``. Loopback only.

    .venv/bin/python benchmarks/capacity.py                  # 3,000 clients, ~3 minutes
    .venv/bin/python benchmarks/capacity.py --clients 6000 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    cpu_seconds,
    free_port,
    machine_info,
    reference_dir,
    start_redis,
    stop,
    wait_listening,
    write_result,
)

RESULTS = ROOT / "benchmarks" / "results" / "capacity.json"
#: (heartbeat s, messages per client per second) of each run; sigload sleeps up to 1/rate
#: between sends, so its duration must be well above the longest 1/rate.
RUNS = ((5.0, 0.05), (30.0, 0.05), (30.0, 0.5), (30.0, 2.0))
QUICK_RUNS = ((5.0, 0.05), (30.0, 0.05))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def measure(
    clients: int, per_room: int, duration: float, heartbeat: float, rate: float
) -> dict[str, Any]:
    with ExitStack() as stack:
        redis_proc, redis_port = start_redis(stack)
        client = redis.Redis(port=redis_port)
        port = free_port()
        node = subprocess.Popen(
            [
                *(sys.executable, "-m", "signaling", "--port", str(port)),
                *("--log-level", "WARNING", "--max-peers", str(per_room)),
                *("--heartbeat", f"{heartbeat:g}"),
                *("--ip-connections", "0", "--ip-connects-per-minute", "0"),
                *("--redis-url", f"redis://127.0.0.1:{redis_port}/0", "--node-id", "a"),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(stop, node)
        wait_listening(node, port)
        time.sleep(1.0)
        rss_before = rss_mib(node.pid)
        redis_before = int(client.info("memory")["used_memory"])
        load = subprocess.Popen(
            [
                str(reference_dir() / "sigload"),
                *("-url", f"ws://127.0.0.1:{port}/ws", "-rooms", str(clients // per_room)),
                *("-per-room", str(per_room), "-rate", str(rate), "-duration", f"{duration:g}s"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Wait until everyone is in (the members in Redis), then measure the idle window.
        started = time.monotonic()
        while time.monotonic() - started < duration:
            members = sum(
                int(client.hlen(key))
                for key in client.scan_iter("mp:{*}:*:m", count=1000)  # rooms' member hashes
            )
            if members >= clients or load.poll() is not None:
                break
            time.sleep(0.5)
        joined_after = time.monotonic() - started
        time.sleep(2.0)  # settle: join traffic done
        rss_after = rss_mib(node.pid)
        redis_after = int(client.info("memory")["used_memory"])
        window = max(1.0, duration - (time.monotonic() - started) - 2.0)
        cpu0, redis_cpu0 = cpu_seconds(node.pid), cpu_seconds(redis_proc.pid)
        time.sleep(window)
        cpu1, redis_cpu1 = cpu_seconds(node.pid), cpu_seconds(redis_proc.pid)
        stdout, stderr = load.communicate(timeout=duration + 1 / rate + 60)
        if load.returncode != 0:
            raise RuntimeError(f"sigload failed: {stderr.strip()[-500:]}")
        out = json.loads(stdout)
    idle_cpu = (cpu1 - cpu0) / window
    return {
        "clients": clients,
        "per_room": per_room,
        "heartbeat": heartbeat,
        "rate_per_client": rate,
        "delivered": int(out["received"]),
        "joined_clients": int(out["clients"]),
        "join_seconds": float(out["join_seconds"]),
        "all_in_after_seconds": joined_after,
        "node_rss_mib_before": rss_before,
        "node_rss_mib_after": rss_after,
        "node_kib_per_connection": 1024 * (rss_after - rss_before) / clients,
        "idle_window_seconds": window,
        "node_idle_cpu_percent": 100 * idle_cpu,
        "node_idle_us_per_connection_second": 1e6 * idle_cpu / clients,
        # The node's CPU a second over the messages offered a second (pings included).
        "node_us_per_message": 1e6 * idle_cpu / max(1.0, clients * rate),
        "redis_idle_cpu_percent": 100 * (redis_cpu1 - redis_cpu0) / window,
        "redis_bytes_per_member": (redis_after - redis_before) / clients,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--per-room", type=int, default=10)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds sigload runs")
    parser.add_argument("--quick", action="store_true", help="only the heartbeat runs")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (reference_dir() / "sigload").exists():
        print(f"missing {reference_dir() / 'sigload'}: run ./dev setup", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    started = time.monotonic()
    runs = []
    for heartbeat, rate in QUICK_RUNS if args.quick else RUNS:
        print(
            f"{args.clients} clients in rooms of {args.per_room} on 1 node with Redis,"
            f" heartbeat {heartbeat:g} s, {rate:g} msg/s each, {args.duration:g} s",
            flush=True,
        )
        runs.append(measure(args.clients, args.per_room, args.duration, heartbeat, rate))
    result: dict[str, Any] = {"runs": runs, "machine": machine_info(load_before, started)}
    print()
    print(
        "| heartbeat | msg/s (all) | joined | node RSS | KiB per connection | node CPU"
        " | µs per connection per s | µs per message | redis-server CPU | redis bytes per member |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {run['heartbeat']:g} s | {run['clients'] * run['rate_per_client']:,.0f}"
            f" | {run['joined_clients']:,} in {run['join_seconds']:.2f} s"
            f" | {run['node_rss_mib_before']:.0f} -> {run['node_rss_mib_after']:.0f} MiB"
            f" | {run['node_kib_per_connection']:.1f} | {run['node_idle_cpu_percent']:.1f}%"
            f" | {run['node_idle_us_per_connection_second']:.2f}"
            f" | {run['node_us_per_message']:.0f}"
            f" | {run['redis_idle_cpu_percent']:.1f}% | {run['redis_bytes_per_member']:.0f} |"
        )
    print(
        "µs per message: all of the node's CPU (pings included) over the messages offered;"
        " the difference between the heartbeat runs is what the pings cost"
    )
    load = result["machine"]
    print(
        f"\nload average {load_before[0]:.2f} before, {load['loadavg_after'][0]:.2f} after"
        + (": busy machine, numbers are noisy" if load["noisy"] else "")
    )
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
