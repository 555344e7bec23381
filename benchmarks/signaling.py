"""Signaling relay benchmark: our server against the reference Go server, in the same run.

Each measurement starts a fresh server process on a free 127.0.0.1 port and drives it with
``sigload`` (the Go load generator in ``../shared/tools/sigload``): clients join one room and
send targeted ``candidate`` messages to random peers. Scenarios, each for both servers:

1. saturation: every client sends far more than any server relays; delivered messages/s;
2. latency: both servers at half the slower one's saturation rate; one-way p50/p99;
3. stalled: the latency run again with one client that never reads after joining, long
   enough for its socket buffers to fill; the other clients' delivered share and p99 (ours
   must drop the stalled client and carry on; the reference blocks everybody).
4. sustained rate, the project's throughput measure: the highest offered rate (messages/s,
   all clients together) held with nothing lost and p99 <= 50 ms. Short runs (3 s) step the
   offered rate up, doubling from 10,000/s, then bisect between the last held and the first
   failed rate until they are within 10%. A run holds when every message sent arrived, no
   sender's write failed, our server dropped nobody, the senders got >= 97% of the schedule
   out, and p99 <= 50 ms. The servers take turns run by run, the first alternating; noise
   only ever fails a run, so a failed rate is tried again (twice, each after the other
   server's next run) before it counts as failed.
5. join storm: 250, 500 and 1,000 clients join one room one after another (sigload dials,
   joins and waits for its peer-list before the next client; every join sends
   ``peer-joined`` to everyone already in), sigload's ``join_seconds``.

Servers alternate run by run and each scenario is repeated, reporting the median, because
this 2-core machine is shared and the load generator itself needs a core. Prints tables and
writes ``benchmarks/results/signaling.json``. Loopback only.

    .venv/bin/python benchmarks/signaling.py            # full run, about 5 minutes
    .venv/bin/python benchmarks/signaling.py --quick    # smoke run, about 40 seconds
    .venv/bin/python benchmarks/signaling.py --sustain  # the sustained rate only, about 2 minutes
    .venv/bin/python benchmarks/signaling.py --joins    # the join storms only, about 1.5 minutes
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
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

from benchmarks.common import (  # noqa: E402
    cpu_seconds,
    free_port,
    machine_info,
    reference_dir,
    stop,
    wait_listening,
    write_result,
)

RESULTS = ROOT / "benchmarks" / "results" / "signaling.json"
#: Where ``--joins`` (the join storms alone) writes, leaving the full run's results alone.
JOIN_RESULTS = ROOT / "benchmarks" / "results" / "signaling_joins.json"
#: Where ``--sustain`` (the sustained-rate search alone) writes.
SUSTAIN_RESULTS = ROOT / "benchmarks" / "results" / "signaling_sustain.json"
SERVERS = ("ours", "reference")


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
    #: Run the relay scenarios (saturation, latency, stalled).
    relay: bool = True
    #: Search each server's sustained rate (``rooms`` rooms of ``clients``): steps of
    #: ``sustain_duration`` s, doubling from ``sustain_start`` msg/s in all, then bisecting
    #: until the first failing rate is within ``sustain_precision`` of the last held one; a
    #: failing step is run again up to ``sustain_retries`` times before it counts.
    sustain: bool = True
    rooms: int = 1
    sustain_duration: float = 3.0
    sustain_start: float = 10_000.0
    sustain_precision: float = 0.10
    sustain_retries: int = 2


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
    #: The load generator's own CPU over the run (it shares the machine with the server).
    sigload_cpu_percent: float
    #: Our server's count of clients that left during the run, by reason (/metrics).
    leaves: dict[str, int] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


class BenchmarkError(Exception):
    pass


# -- processes ---------------------------------------------------------------------------------


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
            "--byte-rate",
            "1000000000000",
            "--byte-burst",
            "1000000000000",
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
        stop(proc)


def metric_by_label(port: int, name: str, label: str) -> dict[str, int] | None:
    """One counter of our server's /metrics, by the value of its one label; None when the
    server does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    match = re.compile(rf'^{re.escape(name)}\{{{re.escape(label)}="([^"]+)"\}} (\S+)$')
    found = (match.match(line) for line in text.splitlines())
    return {m[1]: int(float(m[2])) for m in found if m is not None}


def leaves_by_reason(port: int) -> dict[str, int] | None:
    """Our server's own count of peers that left, by reason (slow, heartbeat ...)."""
    return metric_by_label(port, "meshpeer_leaves_total", "reason")


# -- one measurement ---------------------------------------------------------------------------


def sigload_command(
    port: int,
    per_room: int,
    rate: float,
    duration: float,
    *,
    rooms: int = 1,
    pad: int | None = None,
    stalled: int = 0,
) -> list[str]:
    """sigload's argv: ``rooms`` rooms of ``per_room`` clients, each sending ``rate`` msg/s.

    ``pad`` None and ``stalled`` 0 leave sigload's own defaults (200 bytes, none stalled).
    """
    command = [
        str(reference_dir() / "sigload"),
        "-url",
        f"ws://127.0.0.1:{port}/ws",
        "-rooms",
        str(rooms),
        "-per-room",
        str(per_room),
        "-rate",
        f"{rate:.3f}",
        "-duration",
        f"{duration:g}s",
    ]
    if pad is not None:
        command += ["-pad", str(pad)]
    if stalled:
        command += ["-stall", str(stalled)]
    return command


def measure(
    name: str,
    scenario: str,
    rate: float,
    stalled: int,
    duration: float,
    settings: Settings,
    rooms: int = 1,
) -> Run:
    with running(name, settings) as (proc, port):
        command = sigload_command(
            port, settings.clients, rate, duration, rooms=rooms, pad=settings.pad, stalled=stalled
        )
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_before, wall_before = cpu_seconds(proc.pid), time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
        cpu = cpu_seconds(proc.pid) - cpu_before
        wall = time.monotonic() - wall_before
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
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
        sigload_cpu_percent=100.0
        * (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
        / wall,
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
    with running(name, settings) as (proc, port):
        command = sigload_command(port, clients, STORM_RATE, STORM_DURATION)
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


# -- sustained rate ----------------------------------------------------------------------------

#: The project's throughput rule: the highest offered rate held with nothing lost and p99 at
#: most this.
SUSTAIN_P99_MS = 50.0
#: A step whose senders got fewer than this share of the scheduled messages out did not offer
#: its rate (sigload's senders fall behind when the server pushes back or the load generator
#: runs out of CPU; the messages they never sent are not counted as lost or late).
MIN_OFFERED_SHARE = 0.97
#: The search gives up below / above these offered rates (messages/s, all clients).
SUSTAIN_MIN_RATE, SUSTAIN_MAX_RATE = 100.0, 2_000_000.0


@dataclass
class Step:
    """One sigload run of the sustained-rate search, and whether the server held it."""

    server: str
    #: Messages/s offered by all clients together.
    offered_per_s: float
    #: 1 for the first run of this rate, 2 for its retry ...
    attempt: int
    held: bool
    #: Why the step failed (empty when held).
    reasons: list[str]
    run: Run
    #: The machine's 1-minute load average when the step ended (this machine is shared).
    loadavg: float

    def row(self) -> dict[str, Any]:
        """The step as a row of the results' ``steps`` (signaling and cluster alike)."""
        run = self.run
        return {
            "server": self.server,
            "offered_per_s": self.offered_per_s,
            "rate_per_client": run.rate_per_client,
            "attempt": self.attempt,
            "held": self.held,
            "reasons": self.reasons,
            "sent": run.sent,
            "received": run.received,
            "send_errors": run.send_errors,
            "lat_ms_p50": run.lat_ms_p50,
            "lat_ms_p99": run.lat_ms_p99,
            "lat_ms_max": run.lat_ms_max,
            "server_cpu_percent": run.server_cpu_percent,
            "sigload_cpu_percent": run.sigload_cpu_percent,
            "leaves": run.leaves,
            "loadavg": self.loadavg,
        }


def shortfalls(run: Run, offered_per_s: float, duration: float) -> list[str]:
    """Why ``run`` did not hold ``offered_per_s``: nothing lost and p99 <= 50 ms (empty: held)."""
    out = run.raw
    reasons = []
    # Each sender starts at a random point of its first interval: half a message extra each.
    scheduled = offered_per_s * duration + out["clients"] / 2
    if run.sent < MIN_OFFERED_SHARE * scheduled:
        reasons.append(f"senders fell behind: sent {run.sent / scheduled:.0%} of the offer")
    if run.send_errors:
        reasons.append(f"{run.send_errors} clients disconnected (send failed)")
    dropped = {k: v for k, v in (run.leaves or {}).items() if k not in ("closed", "dropped")}
    if dropped:
        reasons.append(
            "server dropped " + ", ".join(f"{n} for {k}" for k, n in sorted(dropped.items()))
        )
    lost = run.sent - run.received
    if lost > 0:
        reasons.append(f"lost {lost:,} ({lost / max(run.sent, 1):.2%})")
    if run.misrouted or out["bad_json"]:
        reasons.append(f"{run.misrouted} misrouted, {out['bad_json']} bad JSON")
    if run.lat_ms_p99 > SUSTAIN_P99_MS:
        reasons.append(f"p99 {run.lat_ms_p99:,.0f} ms")
    return reasons


@dataclass
class Search:
    """One server's search: the highest held and the lowest failed rate so far.

    The machine's noise only ever makes a step fail, so a failing step is run again (after
    the other server's next step, not at once: a busy spell of the machine lasts a while)
    and a rate counts as failed when all ``1 + sustain_retries`` attempts failed.
    """

    server: str
    good: Step | None = None
    #: Of the lowest failed rate's attempts, the one closest to holding (lowest p99).
    bad: Step | None = None
    #: How many attempts that rate failed.
    bad_tries: int = 0
    #: The failed attempts so far at the rate being tried.
    failures: list[Step] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    def record(self, step: Step, settings: Settings) -> None:
        self.steps.append(step)
        if step.held:
            self.good, self.failures = step, []
            return
        self.failures.append(step)
        if len(self.failures) > settings.sustain_retries:
            self.bad = min(self.failures, key=lambda failed: failed.run.lat_ms_p99)
            self.bad_tries, self.failures = len(self.failures), []

    def next_rate(self, settings: Settings) -> float | None:
        """The next offered rate to try, None when the search is done."""
        if self.failures:  # a retry
            return self.failures[-1].offered_per_s
        good, bad = self.good, self.bad
        if bad is None:  # doubling up
            rate = settings.sustain_start if good is None else 2 * good.offered_per_s
            return rate if rate <= SUSTAIN_MAX_RATE else None
        if good is None:  # even the start failed: halving down
            rate = bad.offered_per_s / 2
            return rate if rate >= SUSTAIN_MIN_RATE else None
        if bad.offered_per_s <= good.offered_per_s * (1 + settings.sustain_precision):
            return None
        return float(round((good.offered_per_s + bad.offered_per_s) / 2))

    def row(self) -> dict[str, Any]:
        """The search's outcome as a row of the results' ``summary``."""
        good, bad = self.good, self.bad
        return {
            "sustained_per_s": good.offered_per_s if good else 0.0,
            "lat_ms_p50": good.run.lat_ms_p50 if good else None,
            "lat_ms_p99": good.run.lat_ms_p99 if good else None,
            "server_cpu_percent": good.run.server_cpu_percent if good else None,
            # None: nothing up to SUSTAIN_MAX_RATE failed.
            "failing_per_s": bad.offered_per_s if bad else None,
            "failing_reasons": bad.reasons if bad else [],
            "failing_tries": self.bad_tries,
            "failing_lat_ms_p99": bad.run.lat_ms_p99 if bad else None,
            "steps": len(self.steps),
            "retries": sum(step.attempt > 1 for step in self.steps),
        }


def sustain_step(name: str, offered_per_s: float, attempt: int, settings: Settings) -> Step:
    senders = settings.rooms * settings.clients
    duration = settings.sustain_duration
    run = measure(
        name, "sustain", offered_per_s / senders, 0, duration, settings, rooms=settings.rooms
    )
    reasons = shortfalls(run, offered_per_s, duration)
    step = Step(name, offered_per_s, attempt, not reasons, reasons, run, os.getloadavg()[0])
    print(
        f"  {name:<9} offered {offered_per_s:9,.0f}/s ({run.rate_per_client:7.1f}/client)"
        f"  p50 {run.lat_ms_p50:8.2f} ms  p99 {run.lat_ms_p99:8.2f} ms"
        f"  CPU server {run.server_cpu_percent:3.0f}% sigload {run.sigload_cpu_percent:3.0f}%  "
        + ("held" if step.held else "FAILED: " + "; ".join(reasons)),
        flush=True,
    )
    return step


def sustained_rates(settings: Settings) -> dict[str, Any]:
    """Each server's highest offered rate held with nothing lost and p99 <= 50 ms.

    The servers take turns step by step, the one going first alternating, so that the shared
    machine's noise falls on both searches alike.
    """
    print(
        f"sustained rate: {settings.rooms} room(s) of {settings.clients} clients,"
        f" {settings.sustain_duration:g} s steps, nothing lost and p99 <= {SUSTAIN_P99_MS:g} ms",
        flush=True,
    )
    searches = {name: Search(name) for name in settings.servers}
    for turn in itertools.count():
        order = settings.servers if turn % 2 == 0 else tuple(reversed(settings.servers))
        pending = [(searches[name], searches[name].next_rate(settings)) for name in order]
        if all(rate is None for _, rate in pending):
            break
        for search, rate in pending:
            if rate is not None:
                attempt = len(search.failures) + 1
                search.record(sustain_step(search.server, rate, attempt, settings), settings)
    summary = {name: search.row() for name, search in searches.items()}
    ratio = None
    if {"ours", "reference"} <= set(summary) and summary["reference"]["sustained_per_s"]:
        ratio = summary["ours"]["sustained_per_s"] / summary["reference"]["sustained_per_s"]
    return {
        "criteria": {
            "lost": 0,
            "lat_ms_p99_max": SUSTAIN_P99_MS,
            "min_offered_share": MIN_OFFERED_SHARE,
        },
        "summary": summary,
        "ratio": ratio,
        "steps": [step.row() for search in searches.values() for step in search.steps],
    }


def sustain_table(sustain: dict[str, Any]) -> str:
    header = (
        f"| {'server':<9} | {'highest sustained msg/s':>23} | {'p99 ms there':>12} "
        f"| first failing msg/s, why |"
    )
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for name, row in sustain["summary"].items():
        p99 = "-" if row["lat_ms_p99"] is None else f"{row['lat_ms_p99']:.2f}"
        if row["failing_per_s"] is None:
            failing = f"none up to {SUSTAIN_MAX_RATE:,.0f}"
        else:
            failing = f"{row['failing_per_s']:,.0f}: " + "; ".join(row["failing_reasons"])
            if row["failing_tries"] > 1:
                failing += f" (the closest of {row['failing_tries']} tries)"
        lines.append(f"| {name:<9} | {row['sustained_per_s']:>23,.0f} | {p99:>12} | {failing} |")
    return "\n".join(lines)


def sustain_verdict_lines(sustain: dict[str, Any]) -> list[str]:
    lines = [
        f"sustained rate: held = every message delivered, no client dropped, p99 <="
        f" {SUSTAIN_P99_MS:g} ms; each server's limit lies between its held and first failing rate"
    ]
    if sustain["ratio"] is not None:
        lines.append(
            f"sustained rate, ours / reference: {sustain['ratio']:.2f}x (the throughput measure;"
            " target >= 1.2x)"
        )
    return lines


# -- the benchmark -----------------------------------------------------------------------------


def benchmark(settings: Settings) -> dict[str, Any]:
    result = relay_benchmark(settings) if settings.relay else {}
    result["settings"] = asdict(settings)
    if settings.sustain:
        result["sustain"] = sustained_rates(settings)
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
            f"delivered at saturation, ours / reference: {verdict['throughput_ratio']:.2f}x"
            " (counts lost messages as speed: not the throughput measure, see sustained rate)"
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
    parser.add_argument(
        "--clients", type=int, default=50, help="clients per room (one room but with --rooms)"
    )
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
        "--rooms",
        type=int,
        default=1,
        help="rooms of --clients clients each in the sustained-rate search (the other relay "
        "scenarios use one room)",
    )
    parser.add_argument(
        "--sustain-duration", type=float, default=3.0, help="seconds of sending per search step"
    )
    parser.add_argument(
        "--sustain-start",
        type=float,
        default=10_000.0,
        help="offered messages/s (all clients together) of the search's first step",
    )
    parser.add_argument(
        "--sustain-precision",
        type=float,
        default=0.10,
        help="bisect until the first failing rate is within this fraction of the held one",
    )
    parser.add_argument(
        "--sustain-retries",
        type=int,
        default=2,
        help="runs again of a failing step before its rate counts as failed (noise on a "
        "shared machine only ever makes a step fail)",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--joins", action="store_true", help="the join storms only (no relay scenarios)"
    )
    only.add_argument("--sustain", action="store_true", help="the sustained-rate search only")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (~40 s)")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"where to write the JSON (default: {RESULTS.relative_to(ROOT)}, with --joins "
        f"{JOIN_RESULTS.relative_to(ROOT)}, with --sustain {SUSTAIN_RESULTS.relative_to(ROOT)})",
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
    if args.rooms < 1 or args.sustain_duration <= 0 or args.sustain_precision <= 0:
        print("--rooms, --sustain-duration and --sustain-precision must be > 0", file=sys.stderr)
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
        join_sizes=() if args.sustain else join_sizes[:1] if args.quick else join_sizes,
        join_repeats=1 if args.quick else args.join_repeats,
        relay=not (args.joins or args.sustain),
        sustain=not args.joins,
        rooms=args.rooms,
        sustain_duration=1.0 if args.quick else args.sustain_duration,
        sustain_start=args.sustain_start,
        sustain_precision=0.5 if args.quick else args.sustain_precision,
        sustain_retries=0 if args.quick else args.sustain_retries,
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
    result["machine"] = machine_info(load_before, started)
    load_after = result["machine"]["loadavg_after"]
    if "summary" in result:
        print()
        print(table(result))
        print()
        for line in verdict_lines(result):
            print(line)
    if "sustain" in result:
        print()
        print(sustain_table(result["sustain"]))
        print()
        for line in sustain_verdict_lines(result["sustain"]):
            print(line)
    if "joins" in result:
        print()
        print(join_table(result["joins"]))
        print()
        for line in join_verdict_lines(result["joins"]):
            print(line)
    noisy = result["machine"]["noisy"]
    print(
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {cores} cores"
        + (": the machine was busy before the run, numbers are noisy" if noisy else "")
    )
    if args.quick:
        print(
            "--quick: a smoke run (1 s runs, a 3 s stall, a coarse sustained-rate search, one"
            " join storm of the first size):"
            " the numbers are not comparable"
        )
    output: Path = args.output or (
        JOIN_RESULTS if args.joins else SUSTAIN_RESULTS if args.sustain else RESULTS
    )
    write_result(output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
