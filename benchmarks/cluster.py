"""Several nodes: one node in memory, one node with Redis, two nodes with Redis, in one run.

Three set-ups of our server (``python -m signaling``, the flags of ``./dev bench signaling``),
each started fresh for every measurement, with its own ``redis-server`` on a free port:

1. ``memory``: 1 node, rooms in the process (no ``--redis-url``);
2. ``redis x1``: 1 node with ``--redis-url``;
3. ``redis x2``: 2 nodes with ``--redis-url``, each sigload dialling its own node: rooms
   per node, so no message crosses nodes (Redis's cost for joins, leaves and liveness);
4. ``redis x2 lb``: the same 2 nodes behind a load balancer without sticky sessions: both
   sigloads dial one port that the kernel hands out to the nodes in turn (an nftables
   ``dnat ... numgen inc mod 2`` rule on loopback, made for the run and removed after), so
   every room is split across the nodes and about half of the messages go node to node
   through Redis pub/sub. Needs root (nftables); skipped with the reason otherwise.

The load is the same in all: two ``sigload`` processes at once, each with half the clients
in a room of its own (``ws://.../ws?room=a`` and ``?room=b``). sigload cannot put two of its
instances in one room (its client IDs are always ``p<room>-<i>``, no prefix flag); the load
balancer splits each instance's room instead.

For each set-up:

- the sustained rate, the search of ``benchmarks/signaling.py`` (the highest offered rate,
  all clients together, held with nothing lost and p99 <= 50 ms; doubling, then bisecting),
  with shorter steps; the set-ups take turns step by step. A step's p99 is the worse of the
  two sigloads' p99s;
- CPU µs per delivered message at the highest held step, for each node and redis-server
  (``cpu_seconds`` over the step, divided by all messages delivered in it, so the columns
  add up to the total); and the same at one rate for all set-ups (the search's second step,
  twice ``--sustain-start``), since the cost per message falls as the rate rises;
- join time: the two sigloads join 125 clients each at once (250 in all), sigload's
  ``join_seconds``, the slower of the two, median of ``--join-repeats`` runs.

Prints a markdown table and writes ``benchmarks/results/cluster.json``. Loopback only.

    .venv/bin/python benchmarks/cluster.py           # about 2-4 minutes
    .venv/bin/python benchmarks/cluster.py --quick   # smoke run, about a minute
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
from benchmarks.signaling import (  # noqa: E402
    STORM_DURATION,
    STORM_RATE,
    SUSTAIN_P99_MS,
    BenchmarkError,
    Run,
    Search,
    Settings,
    Step,
    leaves_by_reason,
    metric_by_label,
    server_command,
    shortfalls,
    sigload_command,
)
from tests.net.balancer import balancer_unavailable, load_balancer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cluster.json"
#: The rooms of the two sigloads (``?room=``): sigload's IDs would clash in one room.
ROOMS = ("a", "b")


@dataclass(frozen=True)
class Setup:
    name: str
    nodes: int
    redis: bool
    balanced: bool = False  # clients dial a round-robin load balancer in front of the nodes


SETUPS = (
    Setup("memory", 1, False),
    Setup("redis x1", 1, True),
    Setup("redis x2", 2, True),
    Setup("redis x2 lb", 2, True, balanced=True),
)


def cluster_messages(port: int) -> dict[str, int]:
    """A node's messages to and from other nodes (its /metrics)."""
    return metric_by_label(port, "meshpeer_cluster_messages_total", "direction") or {}


@dataclass
class Processes:
    """One set-up's running processes: its nodes (name, process, port) and redis-server."""

    nodes: list[tuple[str, subprocess.Popen[bytes], int]]
    redis: subprocess.Popen[bytes] | None
    #: The port clients dial instead of the nodes' own (a load balancer), if any.
    balancer: int | None = None

    def cpu(self) -> dict[str, float]:
        out = {f"node {name}": cpu_seconds(proc.pid) for name, proc, _ in self.nodes}
        if self.redis is not None:
            out["redis"] = cpu_seconds(self.redis.pid)
        return out


@contextmanager
def started(setup: Setup, settings: Settings) -> Iterator[Processes]:
    """Fresh processes for one measurement: redis-server first, then the nodes."""
    with ExitStack() as stack:
        redis: subprocess.Popen[bytes] | None = None
        redis_url = None
        if setup.redis:
            redis, redis_port = start_redis(stack)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        nodes = []
        for name in ROOMS[: setup.nodes]:
            port = free_port()
            command, env = server_command("ours", port, settings)
            env.pop("MESHPEER_REDIS_URL", None)
            if redis_url:
                command += ["--redis-url", redis_url, "--node-id", name]
            proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            stack.callback(stop, proc)
            nodes.append((name, proc, port))
        for _, proc, port in nodes:
            wait_listening(proc, port)
        balancer = None
        if setup.balanced:
            balancer = stack.enter_context(load_balancer([port for _, _, port in nodes]))
        yield Processes(nodes, redis, balancer)


def sigloads(procs: Processes, per_room: int, rate: float, duration: float) -> list[list[str]]:
    """Two sigload command lines, one per room; sigload ``i`` dials node ``i % nodes``."""
    commands = []
    for i, room in enumerate(ROOMS):
        _, _, port = procs.nodes[i % len(procs.nodes)]
        command = sigload_command(procs.balancer or port, per_room, rate, duration)
        url = command.index("-url") + 1
        command[url] += f"?room={room}"
        commands.append(command)
    return commands


def run_sigloads(commands: list[list[str]], timeout: float) -> list[dict[str, Any]]:
    running = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    outs = []
    for proc in running:
        stdout, stderr = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise BenchmarkError(f"sigload failed: {stderr.strip()[-500:]}")
        outs.append(json.loads(stdout))
    return outs


def measure(setup: Setup, offered_per_s: float, duration: float, settings: Settings) -> Run:
    """One sustained-rate step: both sigloads at ``offered_per_s`` in all, fresh processes."""
    rate = offered_per_s / settings.clients
    with started(setup, settings) as procs:
        commands = sigloads(procs, settings.clients // 2, rate, duration)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_before, wall_before = procs.cpu(), time.monotonic()
        outs = run_sigloads(commands, duration + 60)
        cpu_after, wall = procs.cpu(), time.monotonic() - wall_before
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        leaves: dict[str, int] = {}
        crossed = 0
        for _, _, port in procs.nodes:
            for reason, n in (leaves_by_reason(port) or {}).items():
                leaves[reason] = leaves.get(reason, 0) + n
            crossed += cluster_messages(port).get("in", 0)
    cpu = {key: cpu_after[key] - cpu_before[key] for key in cpu_before}
    node_cpu = sum(v for k, v in cpu.items() if k.startswith("node"))

    def total(key: str) -> int:
        return sum(int(out[key]) for out in outs)

    return Run(
        server=setup.name,
        scenario="sustain",
        rate_per_client=rate,
        stalled=0,
        delivered_per_s=sum(float(out["delivered_per_s"]) for out in outs),
        sent=total("sent"),
        received=total("received"),
        misrouted=total("misrouted"),
        send_errors=total("send_errors"),
        # Percentiles of two sigloads do not merge: the worse of the two.
        lat_ms_p50=max(float(out["lat_ms_p50"]) for out in outs),
        lat_ms_p99=max(float(out["lat_ms_p99"]) for out in outs),
        lat_ms_max=max(float(out["lat_ms_max"]) for out in outs),
        server_cpu_percent=100.0 * node_cpu / wall,
        server_cpu_seconds=node_cpu,
        sigload_cpu_percent=100.0
        * (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
        / wall,
        leaves=leaves,
        raw={
            "clients": total("clients"),
            "bad_json": total("bad_json"),
            "send_seconds": max(float(out["send_seconds"]) for out in outs),
            "cpu_seconds": cpu,
            "wall_seconds": wall,
            # Node messages received from other nodes (each a message or a membership change).
            "cross_node_in": crossed,
            "sigloads": outs,
        },
    )


def sustain_step(setup: Setup, offered_per_s: float, attempt: int, settings: Settings) -> Step:
    duration = settings.sustain_duration
    run = measure(setup, offered_per_s, duration, settings)
    reasons = shortfalls(run, offered_per_s, duration)
    step = Step(setup.name, offered_per_s, attempt, not reasons, reasons, run, os.getloadavg()[0])
    cpu = " ".join(
        f"{key} {100 * s / run.raw['wall_seconds']:3.0f}%"
        for key, s in run.raw["cpu_seconds"].items()
    )
    print(
        f"  {setup.name:<9} offered {offered_per_s:9,.0f}/s  p99 {run.lat_ms_p99:8.2f} ms"
        f"  CPU {cpu} sigloads {run.sigload_cpu_percent:3.0f}%  "
        + ("held" if step.held else "FAILED: " + "; ".join(reasons)),
        flush=True,
    )
    return step


def cpu_per_message(step: Step) -> dict[str, float]:
    """µs of each process's CPU per message delivered in ``step``, and their total."""
    received = max(step.run.received, 1)
    out = {key: 1e6 * s / received for key, s in step.run.raw["cpu_seconds"].items()}
    out["total"] = sum(out.values())
    return out


def sustained_rates(
    settings: Settings, common_rate: float, setups: Sequence[Setup]
) -> dict[str, Any]:
    """signaling.py's search for every set-up, the set-ups taking turns step by step."""
    print(
        f"sustained rate: {settings.clients} clients (2 rooms of {settings.clients // 2}),"
        f" {settings.sustain_duration:g} s steps, nothing lost and p99 <= {SUSTAIN_P99_MS:g} ms",
        flush=True,
    )
    searches = {setup.name: Search(setup.name) for setup in setups}
    for turn in itertools.count():
        order = setups if turn % 2 == 0 else tuple(reversed(setups))
        pending = [(setup, searches[setup.name].next_rate(settings)) for setup in order]
        if all(rate is None for _, rate in pending):
            break
        for setup, rate in pending:
            if rate is not None:
                search = searches[setup.name]
                attempt = len(search.failures) + 1
                search.record(sustain_step(setup, rate, attempt, settings), settings)
    summary = {}
    for name, search in searches.items():
        row = search.row()
        row["cpu_us_per_message"] = cpu_per_message(search.good) if search.good else None
        row["sigload_cpu_percent"] = search.good.run.sigload_cpu_percent if search.good else None
        row["cross_node_share"] = (
            search.good.run.raw["cross_node_in"] / max(search.good.run.received, 1)
            if search.good
            else None
        )
        # The cost per message falls as the rate rises (more frames per write and per loop
        # pass): the set-ups compared at one rate too, the first held step at common_rate.
        common = [step for step in search.steps if step.held and step.offered_per_s == common_rate]
        row["common_rate_per_s"] = common_rate
        row["cpu_us_per_message_at_common_rate"] = cpu_per_message(common[0]) if common else None
        summary[name] = row
    steps = []
    for search in searches.values():
        for step in search.steps:
            row = step.row()
            row["cpu_seconds"] = step.run.raw["cpu_seconds"]
            steps.append(row)
    return {"summary": summary, "steps": steps}


def measure_joins(setup: Setup, clients: int, settings: Settings) -> dict[str, Any]:
    with started(setup, settings) as procs:
        commands = sigloads(procs, clients // 2, STORM_RATE, STORM_DURATION)
        cpu_before = procs.cpu()
        outs = run_sigloads(commands, 300)
        cpu_after = procs.cpu()
    return {
        "join_seconds": max(float(out["join_seconds"]) for out in outs),
        "join_seconds_each": [float(out["join_seconds"]) for out in outs],
        "cpu_seconds": {key: cpu_after[key] - cpu_before[key] for key in cpu_before},
    }


def join_storms(settings: Settings, setups: Sequence[Setup]) -> dict[str, Any]:
    clients = settings.join_sizes[0]
    print(f"joins: 2 sigloads at once, {clients // 2} clients each, one after another", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {setup.name: [] for setup in setups}
    for i in range(settings.join_repeats):
        for setup in setups if i % 2 == 0 else tuple(reversed(setups)):
            run = measure_joins(setup, clients, settings)
            runs[setup.name].append(run)
            print(
                f"  {setup.name:<9} {clients} clients  join {run['join_seconds']:.3f} s", flush=True
            )
    summary = {}
    for name, found in runs.items():
        seconds = sorted(run["join_seconds"] for run in found)
        summary[name] = {
            "clients": clients,
            "join_seconds": statistics.median(seconds),
            "join_seconds_min": seconds[0],
            "join_seconds_max": seconds[-1],
            "runs": len(found),
        }
    return {"summary": summary, "runs": runs}


def table(result: dict[str, Any], setups: Sequence[Setup]) -> str:
    clients = result["settings"]["join_sizes"][0]
    common = 2 * result["settings"]["sustain_start"]
    header = (
        "| set-up | sustained msg/s | p99 ms there "
        f"| CPU µs/msg node a (at {common / 1000:g}k/s) | node b | redis-server "
        f"| total | crossed | join {clients} clients, s (min-max) |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for setup in setups:
        row = result["sustain"]["summary"][setup.name]
        joins = result["joins"]["summary"][setup.name]
        cpu = row["cpu_us_per_message"] or {}
        at = row["cpu_us_per_message_at_common_rate"] or {}

        def cell(key: str, cpu: dict[str, float] = cpu, at: dict[str, float] = at) -> str:
            return (f"{cpu[key]:.1f}" if key in cpu else "-") + (
                f" ({at[key]:.1f})" if key in at else ""
            )

        p99 = "-" if row["lat_ms_p99"] is None else f"{row['lat_ms_p99']:.1f}"
        label = f"{setup.nodes} node{'s' if setup.nodes > 1 else ''}, " + (
            "Redis" if setup.redis else "in memory"
        )
        label += ", load balancer" if setup.balanced else ""
        share = row.get("cross_node_share")
        crossed = "-" if share is None else f"{100 * share:.0f}%"
        lines.append(
            f"| {label} | {row['sustained_per_s']:,.0f} | {p99} | {cell('node a')} "
            f"| {cell('node b')} | {cell('redis')} | {cell('total')} | {crossed} "
            f"| {joins['join_seconds']:.3f} ({joins['join_seconds_min']:.3f}-"
            f"{joins['join_seconds_max']:.3f}) |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients", type=int, default=50, help="clients in all, half per sigload (even)"
    )
    parser.add_argument(
        "--sustain-duration", type=float, default=2.0, help="seconds of sending per search step"
    )
    parser.add_argument(
        "--sustain-start",
        type=float,
        default=20_000.0,
        help="offered messages/s (all clients together) of the search's first step",
    )
    parser.add_argument(
        "--sustain-precision",
        type=float,
        default=0.15,
        help="bisect until the first failing rate is within this fraction of the held one",
    )
    parser.add_argument(
        "--sustain-retries", type=int, default=2, help="runs again of a failing step"
    )
    parser.add_argument(
        "--join-clients", type=int, default=250, help="clients of a join run, in all (even)"
    )
    parser.add_argument("--join-repeats", type=int, default=3, help="join runs per set-up")
    parser.add_argument("--quick", action="store_true", help="a smoke run (~1 minute)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (reference_dir() / "sigload").exists():
        print(f"missing {reference_dir() / 'sigload'}: run ./dev setup", file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None:
        print("no redis-server: apt-get install redis-server (./dev setup)", file=sys.stderr)
        return 2
    if args.clients < 4 or args.clients % 2 or args.join_clients < 4 or args.join_clients % 2:
        print("--clients and --join-clients must be even and >= 4", file=sys.stderr)
        return 2
    settings = Settings(
        clients=args.clients,
        pad=200,
        duration=args.sustain_duration,
        stall_duration=None,
        saturation_rate=0.0,
        repeats=1,
        stall_repeats=0,
        send_queue=1024,
        servers=("ours",),
        join_sizes=(args.join_clients,),
        join_repeats=1 if args.quick else args.join_repeats,
        relay=False,
        sustain=True,
        rooms=1,
        sustain_duration=1.0 if args.quick else args.sustain_duration,
        sustain_start=args.sustain_start,
        sustain_precision=0.5 if args.quick else args.sustain_precision,
        sustain_retries=0 if args.quick else args.sustain_retries,
    )
    setups = SETUPS
    why_not = balancer_unavailable()
    if why_not is not None:
        setups = tuple(setup for setup in SETUPS if not setup.balanced)
        print(f"skipping the load-balanced set-up: {why_not}", flush=True)
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    print(f"load average {load_before[0]:.2f} on {cores} cores", flush=True)
    started_at = time.monotonic()
    try:
        result: dict[str, Any] = {"settings": asdict(settings), "rooms": list(ROOMS)}
        result["sustain"] = sustained_rates(settings, 2 * settings.sustain_start, setups)
        result["joins"] = join_storms(settings, setups)
    except (BenchmarkError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    result["machine"] = machine_info(load_before, started_at)
    load_after = result["machine"]["loadavg_after"]
    print()
    print(table(result, setups))
    print()
    print(
        "CPU µs/msg: each process's CPU over the highest held step (in brackets: over the"
        f" step at {2 * settings.sustain_start:,.0f} msg/s, the same for every set-up) /"
        " messages delivered in it (all nodes). Crossed: of the messages delivered at the"
        " highest held step, those that went node to node (only behind the load balancer)"
    )
    print(
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {cores} cores"
        + (
            ": the machine was busy before the run, numbers are noisy"
            if result["machine"]["noisy"]
            else ""
        )
    )
    if args.quick:
        print("--quick: a smoke run, the numbers are not comparable")
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
