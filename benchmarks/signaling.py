"""Signaling relay benchmark: our server against the reference Go server, in the same run.

Each measurement starts a fresh server process on a free 127.0.0.1 port and drives it with
``sigload`` (the Go load generator in ``../shared/tools/sigload``): clients join one room and
send targeted ``candidate`` messages to random peers. Three scenarios per server:

1. saturation: every client sends far more than any server relays; delivered messages/s;
2. latency: both servers at half the slower one's saturation rate; one-way p50/p99;
3. stalled: the latency run again with one client that never reads after joining, long
   enough for its socket buffers to fill; the other clients' delivered share and p99 (ours
   must drop the stalled client and carry on; the reference blocks everybody).
4. join storm: 250, 500 and 1,000 clients join one room one after another (sigload dials,
   joins and waits for its peer-list before the next client; every join sends
   ``peer-joined`` to everyone already in), sigload's ``join_seconds``.

Servers alternate run by run and each scenario is repeated, reporting the median, because
this 2-core machine is shared and the load generator itself needs a core. Prints a table and
writes ``benchmarks/results/signaling.json``. Loopback only.

    .venv/bin/python benchmarks/signaling.py            # full run, about 4 minutes
    .venv/bin/python benchmarks/signaling.py --quick    # smoke run, about 20 seconds
    .venv/bin/python benchmarks/signaling.py --joins    # the join storms only, about 1.5 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import free_port, wait_listening  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "signaling.json"
#: Where ``--joins`` (the join storms alone) writes, leaving the full run's results alone.
JOIN_RESULTS = ROOT / "benchmarks" / "results" / "signaling_joins.json"
SERVERS = ("ours", "reference")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Settings:
    clients: int
    pad: int
    duration: float
    #: Seconds of the stalled runs; None: long enough to fill the stalled client's buffers.
    stall_duration: float | None
    saturation_rate: float
    repeats: int
    stall_repeats: int
    send_queue: int
    servers: tuple[str, ...]
    #: Clients per room of the join storms (none: no join storms), and runs of each.
    join_sizes: tuple[int, ...] = ()
    join_repeats: int = 1
    #: Skip the relay scenarios (saturation, latency, stalled): join storms only.
    joins_only: bool = False


@dataclass
class Run:
    """One sigload run against one fresh server process."""

    server: str
    scenario: str
    rate_per_client: float
    stalled: int
    delivered_per_s: float
    sent: int
    received: int
    misrouted: int
    send_errors: int
    lat_ms_p50: float
    lat_ms_p99: float
    lat_ms_max: float
    server_cpu_percent: float
    server_cpu_seconds: float
    #: Our server's count of clients that left during the run, by reason (/metrics).
    leaves: dict[str, int] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class BenchmarkError(Exception):
    pass


# -- processes ---------------------------------------------------------------------------------


def reference_dir() -> Path:
    env = os.environ.get("MESHPEER_REFERENCE_DIR")
    return Path(env) if env else ROOT / ".cache" / "reference"


def server_command(name: str, port: int, settings: Settings) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if name == "ours":
        command = [
            sys.executable,
            "-m",
            "signaling",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
            # Limits raised so the load generator measures relaying, not the rate limiter;
            # the send queue keeps its purpose: the stalled client must still be dropped.
            "--rate",
            "1000000",
            "--burst",
            "1000000",
            "--max-peers",
            str(max(settings.clients, *settings.join_sizes, 32)),
            "--send-queue",
            str(settings.send_queue),
            # A stalled client gets no chance to answer pings: the default heartbeat would drop
            # it after ~7 s, before its socket buffers fill. Raised, so the stalled run tests
            # the bounded send queue instead.
            "--heartbeat",
            "120",
            # Every load-generator client comes from 127.0.0.1: no per-address caps.
            "--ip-connections",
            "0",
            "--ip-connects-per-minute",
            "0",
        ]
        return command, env
    env.update(BIND_HOST="127.0.0.1", PORT=str(port))
    return [str(reference_dir() / "seed-server-env")], env


@contextmanager
def running(name: str, settings: Settings) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    command, env = server_command(name, port, settings)
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(proc, port)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` from /proc (no psutil here)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def leaves_by_reason(port: int) -> dict[str, int] | None:
    """Our server's own count of peers that left, by reason (slow, heartbeat ...)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    match = re.compile(r'^meshpeer_leaves_total\{reason="([^"]+)"\} (\S+)$')
    found = (match.match(line) for line in text.splitlines())
    return {m[1]: int(float(m[2])) for m in found if m is not None}


# -- one measurement ---------------------------------------------------------------------------


def measure(
    name: str, scenario: str, rate: float, stalled: int, duration: float, settings: Settings
) -> Run:
    sigload = reference_dir() / "sigload"
    with running(name, settings) as (proc, port):
        command = [
            str(sigload),
            "-url",
            f"ws://127.0.0.1:{port}/ws",
            "-per-room",
            str(settings.clients),
            "-rate",
            f"{rate:.3f}",
            "-duration",
            f"{duration:g}s",
            "-pad",
            str(settings.pad),
            "-stall",
            str(stalled),
        ]
        cpu_before, wall_before = cpu_seconds(proc.pid), time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
        cpu = cpu_seconds(proc.pid) - cpu_before
        wall = time.monotonic() - wall_before
        leaves = leaves_by_reason(port) if name == "ours" else None
    if done.returncode != 0:
        raise BenchmarkError(f"sigload failed on {name}: {done.stderr.strip()[-500:]}")
    out = json.loads(done.stdout)
    return Run(
        server=name,
        scenario=scenario,
        rate_per_client=rate,
        stalled=stalled,
        delivered_per_s=float(out["delivered_per_s"]),
        sent=int(out["sent"]),
        received=int(out["received"]),
        misrouted=int(out["misrouted"]),
        send_errors=int(out["send_errors"]),
        lat_ms_p50=float(out["lat_ms_p50"]),
        lat_ms_p99=float(out["lat_ms_p99"]),
        lat_ms_max=float(out["lat_ms_max"]),
        server_cpu_percent=100.0 * cpu / wall,
        server_cpu_seconds=cpu,
        leaves=leaves,
        raw=out,
    )


#: Bytes a client that stops reading absorbs on loopback before its sender blocks: the
#: sender's socket buffer autotunes up to net.ipv4.tcp_wmem's 4 MB, plus the receive buffer
#: (measured here: 4.27 MB).
STALL_BUFFER_BYTES = 4.3e6
#: sigload's frame is its padding plus about this much JSON and framing.
FRAME_OVERHEAD_BYTES = 190


def stall_seconds(rate_per_client: float, pad: int) -> float:
    """A stalled run long enough that the stalled client is stalled for ~10 s of it.

    Each sender addresses 1 in (clients - 1) messages to the stalled client, so it receives
    about ``rate_per_client`` messages/s; a server that blocks on it blocks after its buffers
    fill, and a stall only shows after that.
    """
    fill = STALL_BUFFER_BYTES / max(rate_per_client * (pad + FRAME_OVERHEAD_BYTES), 1.0)
    return min(max(fill + 10.0, 15.0), 60.0)


@dataclass
class JoinRun:
    """One join storm: ``clients`` join one room one after another, on a fresh server."""

    server: str
    clients: int
    join_seconds: float
    #: Server CPU over the whole sigload run: the storm, a short sending phase, the leaves.
    server_cpu_seconds: float
    #: sigload's own CPU over the same run (it reads every ``peer-joined``).
    sigload_cpu_seconds: float


#: sigload's sending phase is not what a join storm measures: each client sends about one
#: message, within half a second (``-rate 0.1 -duration 1s`` measures the same join_seconds
#: but idles ~10 s per run while the senders sleep out their first interval).
STORM_RATE, STORM_DURATION = 2.0, 0.1


def measure_joins(name: str, clients: int, settings: Settings) -> JoinRun:
    sigload = reference_dir() / "sigload"
    with running(name, settings) as (proc, port):
        command = [
            str(sigload),
            "-url",
            f"ws://127.0.0.1:{port}/ws",
            "-per-room",
            str(clients),
            "-rate",
            f"{STORM_RATE:g}",
            "-duration",
            f"{STORM_DURATION:g}s",
        ]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_before = cpu_seconds(proc.pid)
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        cpu = cpu_seconds(proc.pid) - cpu_before
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise BenchmarkError(f"sigload failed on {name}: {done.stderr.strip()[-500:]}")
    out = json.loads(done.stdout)
    return JoinRun(
        server=name,
        clients=clients,
        join_seconds=float(out["join_seconds"]),
        server_cpu_seconds=cpu,
        sigload_cpu_seconds=(after.ru_utime + after.ru_stime)
        - (children.ru_utime + children.ru_stime),
    )


def join_storms(settings: Settings) -> dict[str, Any]:
    """Every size, servers alternating, ``join_repeats`` runs each: medians and spread."""
    servers = settings.servers
    runs: dict[tuple[str, int], list[JoinRun]] = {}
    print("join storms: clients join one room one after another", flush=True)
    for i in range(settings.join_repeats):
        for clients in settings.join_sizes:
            for name in servers if i % 2 == 0 else tuple(reversed(servers)):
                run = measure_joins(name, clients, settings)
                runs.setdefault((name, clients), []).append(run)
                print(
                    f"  {name:<9} {clients:>5} clients  join {run.join_seconds:7.3f} s"
                    f"  server CPU {run.server_cpu_seconds:6.2f} s"
                    f"  sigload CPU {run.sigload_cpu_seconds:6.2f} s",
                    flush=True,
                )
    summary: dict[str, dict[str, Any]] = {}
    for (name, clients), found in runs.items():
        seconds = sorted(run.join_seconds for run in found)
        summary.setdefault(name, {})[str(clients)] = {
            "join_seconds": _median(seconds),
            "join_seconds_min": seconds[0],
            "join_seconds_max": seconds[-1],
            "server_cpu_seconds": _median([run.server_cpu_seconds for run in found]),
            "sigload_cpu_seconds": _median([run.sigload_cpu_seconds for run in found]),
            "runs": len(found),
        }
    ratios: dict[str, float] = {}
    if {"ours", "reference"} <= set(servers):
        for clients in settings.join_sizes:
            key = str(clients)
            ratios[key] = (
                summary["ours"][key]["join_seconds"] / summary["reference"][key]["join_seconds"]
            )
    return {
        "summary": summary,
        "ratio": ratios,
        "runs": [asdict(run) for found in runs.values() for run in found],
    }


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def join_table(joins: dict[str, Any]) -> str:
    header = (
        f"| {'server':<9} | {'clients':>7} | {'join s (median)':>15} | {'min - max':>15} "
        f"| {'ms per join':>11} | {'server CPU s':>12} | {'sigload CPU s':>13} |"
    )
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for name, sizes in joins["summary"].items():
        for clients, row in sizes.items():
            spread = f"{row['join_seconds_min']:.3f} - {row['join_seconds_max']:.3f}"
            lines.append(
                f"| {name:<9} | {int(clients):>7,} | {row['join_seconds']:>15.3f} "
                f"| {spread:>15} | {1000 * row['join_seconds'] / int(clients):>11.2f} "
                f"| {row['server_cpu_seconds']:>12.2f} | {row['sigload_cpu_seconds']:>13.2f} |"
            )
    return "\n".join(lines)


def median_run(runs: Sequence[Run], key: str) -> Run:
    """The run whose ``key`` is the median (the lower one of an even count)."""
    ordered = sorted(runs, key=lambda run: float(getattr(run, key)))
    return ordered[(len(ordered) - 1) // 2]


def alternating(servers: Sequence[str], repeats: int) -> Iterator[str]:
    """A B, B A, A B ...: neither server always runs first on a warming or cooling machine."""
    for i in range(repeats):
        yield from (servers if i % 2 == 0 else tuple(reversed(servers)))


def progress(run: Run) -> None:
    print(
        f"  {run.server:<9} {run.scenario:<10} rate/client {run.rate_per_client:8.1f}"
        f"  delivered {run.delivered_per_s:9.0f}/s  p50 {run.lat_ms_p50:8.2f} ms"
        f"  p99 {run.lat_ms_p99:8.2f} ms  cpu {run.server_cpu_percent:5.1f}%",
        flush=True,
    )


# -- the benchmark -----------------------------------------------------------------------------


def benchmark(settings: Settings) -> dict[str, Any]:
    result = {} if settings.joins_only else relay_benchmark(settings)
    result["settings"] = asdict(settings)
    if settings.join_sizes:
        result["joins"] = join_storms(settings)
    return result


def relay_benchmark(settings: Settings) -> dict[str, Any]:
    servers = settings.servers
    runs: list[Run] = []

    def record(run: Run) -> Run:
        runs.append(run)
        progress(run)
        return run

    print("saturation", flush=True)
    saturation: dict[str, list[Run]] = {name: [] for name in servers}
    for name in alternating(servers, settings.repeats):
        saturation[name].append(
            record(
                measure(
                    name, "saturation", settings.saturation_rate, 0, settings.duration, settings
                )
            )
        )
    best = {name: median_run(saturation[name], "delivered_per_s") for name in servers}
    # Half of the slowest server's saturation throughput, spread over every client: latency
    # compares at the same offered load, one every server sustains.
    rate = min(run.delivered_per_s for run in best.values()) / 2 / settings.clients
    half_rate = dict.fromkeys(servers, rate)

    print(f"latency at half of the slowest saturation: {rate:.0f} msg/s per client", flush=True)
    latency: dict[str, list[Run]] = {name: [] for name in servers}
    for name in alternating(servers, settings.repeats):
        latency[name].append(
            record(measure(name, "latency", half_rate[name], 0, settings.duration, settings))
        )

    print("the same with one client that stops reading", flush=True)
    stalled: dict[str, list[Run]] = {name: [] for name in servers}
    for name in alternating(servers, settings.stall_repeats):
        stalled[name].append(
            record(
                measure(
                    name,
                    "stalled",
                    half_rate[name],
                    1,
                    settings.stall_duration or stall_seconds(half_rate[name], settings.pad),
                    settings,
                )
            )
        )

    summary: dict[str, Any] = {}
    for name in servers:
        lat = median_run(latency[name], "lat_ms_p99")
        stall = median_run(stalled[name], "lat_ms_p99")
        summary[name] = {
            "saturation": _row(best[name]),
            "latency": _row(lat),
            "stalled": _row(stall),
        }
    verdict: dict[str, Any] = {}
    if {"ours", "reference"} <= set(servers):
        ours, ref = summary["ours"], summary["reference"]
        verdict = {
            "throughput_ratio": ours["saturation"]["delivered_per_s"]
            / ref["saturation"]["delivered_per_s"],
            "p99_ratio": ours["latency"]["lat_ms_p99"] / ref["latency"]["lat_ms_p99"],
            "cpu_per_message_ratio": ours["saturation"]["cpu_us_per_message"]
            / ref["saturation"]["cpu_us_per_message"],
        }
    return {"summary": summary, "verdict": verdict, "runs": [asdict(run) for run in runs]}


def _row(run: Run) -> dict[str, Any]:
    row = asdict(run)
    row.pop("raw")
    clients, stalled = run.raw["clients"], run.stalled
    row["offered_per_s"] = run.rate_per_client * (clients - stalled)
    # Of what the senders were asked to send, the share addressed to clients that read:
    # each sender picks among its clients - 1 peers, ``stalled`` of which never read.
    senders = clients - stalled
    readable = row["offered_per_s"] * run.raw["send_seconds"] * (senders - 1) / (clients - 1)
    row["delivered_fraction"] = run.received / readable if readable else 0.0
    # Server CPU per delivered message: what a busy, shared machine disturbs least.
    row["cpu_us_per_message"] = 1e6 * run.server_cpu_seconds / max(run.received, 1)
    return row


def table(result: dict[str, Any]) -> str:
    header = (
        f"| {'server':<9} | {'scenario':<10} | {'offered msg/s':>13} | {'delivered msg/s':>15} "
        f"| {'delivered':>9} "
        f"| {'p50 ms':>7} | {'p99 ms':>8} | {'server CPU':>10} | {'CPU µs/msg':>10} |"
    )
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for name, rows in result["summary"].items():
        for scenario in ("saturation", "latency", "stalled"):
            row = rows[scenario]
            label = scenario if scenario != "stalled" else "1 stalled"
            lines.append(
                f"| {name:<9} | {label:<10} | {row['offered_per_s']:>13,.0f} "
                f"| {row['delivered_per_s']:>15,.0f} | {row['delivered_fraction']:>9.0%} "
                f"| {row['lat_ms_p50']:>7.2f} "
                f"| {row['lat_ms_p99']:>8.2f} | {row['server_cpu_percent']:>9.0f}% "
                f"| {row['cpu_us_per_message']:>10.1f} |"
            )
    return "\n".join(lines)


def join_verdict_lines(joins: dict[str, Any]) -> list[str]:
    return [
        f"join storm of {int(clients):,}: join_seconds ours / reference {ratio:.2f} (target <= 1.0)"
        for clients, ratio in joins["ratio"].items()
    ]


def verdict_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    verdict = result["verdict"]
    if verdict:
        lines.append(
            f"throughput at saturation, ours / reference: {verdict['throughput_ratio']:.2f}x"
            " (target >= 1.2x)"
        )
        lines.append(
            f"p99 at half saturation, ours / reference: {verdict['p99_ratio']:.2f}"
            " (target <= 1.0; both at half the slower one's saturation rate)"
        )
        lines.append(
            f"server CPU per message at saturation, ours / reference:"
            f" {verdict['cpu_per_message_ratio']:.2f}"
        )
    for name, row in result["summary"].items():
        stall = row["stalled"]
        ratio = stall["delivered_fraction"]
        leaves = stall["leaves"]
        # Every client leaves when sigload ends; one dropped earlier left for another reason.
        dropped = {k: v for k, v in (leaves or {}).items() if k not in ("closed", "dropped")}
        lines.append(
            f"{name}: with one stalled client the others got {ratio:.0%} of their messages"
            " (latencies count delivered messages only),"
            f" p99 {stall['lat_ms_p99']:.2f} ms (without: {row['latency']['lat_ms_p99']:.2f} ms)"
            + (
                "; the server dropped the stalled client: "
                + (", ".join(f"{n} for {k}" for k, n in sorted(dropped.items())) or "no")
                if leaves is not None
                else ""
            )
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--servers", default="ours,reference", help="comma-separated: ours,reference"
    )
    parser.add_argument("--clients", type=int, default=50, help="clients, all in one room")
    parser.add_argument("--pad", type=int, default=200, help="padding bytes per candidate")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of sending per run")
    parser.add_argument(
        "--stall-duration",
        type=float,
        default=None,
        help="seconds of sending in the stalled runs (default: until the stalled client's "
        "~4.3 MB of loopback socket buffers fill, plus 10 s; 15 to 60 s)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per server and scenario")
    parser.add_argument("--stall-repeats", type=int, default=1, help="stalled runs per server")
    parser.add_argument(
        "--saturation-rate",
        type=float,
        default=4000.0,
        help="messages/s each client tries to send in the saturation runs",
    )
    parser.add_argument(
        "--send-queue", type=int, default=1024, help="our server's --send-queue (messages)"
    )
    parser.add_argument(
        "--join-sizes",
        default="250,500,1000",
        help="clients per room of the join storms, comma-separated ('' for none)",
    )
    parser.add_argument("--join-repeats", type=int, default=5, help="runs per server and size")
    parser.add_argument(
        "--joins", action="store_true", help="the join storms only (no relay scenarios)"
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~20 s)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"where to write the JSON (default: {RESULTS.relative_to(ROOT)}, with --joins "
        f"{JOIN_RESULTS.relative_to(ROOT)})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    unknown = set(servers) - set(SERVERS)
    if unknown or not servers:
        print(f"unknown servers: {', '.join(sorted(unknown)) or '(none)'}", file=sys.stderr)
        return 2
    for binary in ("sigload", "seed-server-env") if "reference" in servers else ("sigload",):
        if not (reference_dir() / binary).exists():
            print(f"missing {reference_dir() / binary}: run ./dev setup", file=sys.stderr)
            return 2
    duration = 1.0 if args.quick else args.duration
    try:
        join_sizes = tuple(int(n) for n in args.join_sizes.split(",") if n.strip())
    except ValueError:
        print(f"--join-sizes: not a list of numbers: {args.join_sizes!r}", file=sys.stderr)
        return 2
    if args.joins and not join_sizes:
        print("--joins needs at least one --join-sizes", file=sys.stderr)
        return 2
    settings = Settings(
        clients=args.clients,
        pad=args.pad,
        duration=duration,
        stall_duration=3.0 if args.quick else args.stall_duration,
        saturation_rate=args.saturation_rate,
        repeats=1 if args.quick else args.repeats,
        stall_repeats=1 if args.quick else args.stall_repeats,
        send_queue=args.send_queue,
        servers=servers,
        join_sizes=join_sizes[:1] if args.quick else join_sizes,
        join_repeats=1 if args.quick else args.join_repeats,
        joins_only=args.joins,
    )
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    print(f"load average {load_before[0]:.2f} on {cores} cores", flush=True)
    started = time.monotonic()
    try:
        result = benchmark(settings)
    except (BenchmarkError, RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    load_after = os.getloadavg()
    result["machine"] = {
        "cores": cores,
        "python": platform.python_version(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "seconds": round(time.monotonic() - started, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "summary" in result:
        print()
        print(table(result))
        print()
        for line in verdict_lines(result):
            print(line)
    if "joins" in result:
        print()
        print(join_table(result["joins"]))
        print()
        for line in join_verdict_lines(result["joins"]):
            print(line)
    # The benchmark itself keeps about two processes busy: judge the machine by its load
    # before the first run.
    noisy = load_before[0] > 0.5 * cores
    print(
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {cores} cores"
        + (": the machine was busy before the run, numbers are noisy" if noisy else "")
    )
    result["machine"]["noisy"] = noisy
    if args.quick:
        print(
            "--quick: a smoke run (1 s runs, a 3 s stall, one join storm of the first size):"
            " the numbers are not comparable"
        )
    output: Path = args.output or (JOIN_RESULTS if args.joins else RESULTS)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
