"""Soak: the server, three sending bots and receive-only bots for N minutes, sampled every 10 s.

Starts ``python -m signaling`` and three sending ``meshpeer join`` processes on loopback,
each recording the others (``--record``), writing a mosaic snapshot (``--snapshot``) and
stats (``--stats-json``); ``--senders`` picks each sender's job instead (``plain`` only
sends, ``record`` or ``snapshot`` adds one of the two, ``full`` both). Beside them, for
each ``--roles`` x ``--variants``, a bot that sends nothing: ``recorder`` (``--record``
only: packets to file, no decoding), ``receiver`` (no sinks) or ``viewer``
(``--snapshot`` only: decodes everyone); variant ``tuned`` is ``meshpeer join``'s default
allocator settings, ``glibc`` turns them off (``--malloc-arenas 0 --malloc-trim 0``),
``trim`` and ``arenas`` keep one of the two, ``fixed`` adds a fixed mmap threshold
(``--malloc-mmap-threshold 128``), ``traced`` is ``tuned`` under tracemalloc.
Every ``--interval`` seconds it samples, per process, the resident memory (VmRSS) and open
file descriptors from /proc, and from the bots' stats the asyncio task and thread counts,
malloc's used and free bytes, the Python heap (``--tracemalloc``), the fps each receives.
After ``--warmup`` it fits the RSS slope (MiB per minute, least squares) per process and
compares the last sample with the first: RSS and fds must grow less than 5%, and every
bot with the default settings must creep at most 0.05 MiB a minute. Writes
``benchmarks/results/soak.json`` and a PNG plot.

    ./dev bench soak --minutes 60
    ./dev bench soak --minutes 3 --warmup 1     # a short look
    ./dev bench soak --minutes 20 --variants tuned,glibc,trim,arenas --roles recorder
    ./dev bench soak --minutes 20 --senders plain,record,snapshot --bots receiver-tuned
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    free_port,
    last_json_line,
    start_signaling,
    wait_listening,
    write_result,
)

RESULTS = ROOT / "benchmarks" / "results"
#: What each sending bot does besides sending, as ``meshpeer join`` flags (``--senders``).
SENDER_ROLES = {
    "full": ("--record", "{dir}", "--snapshot", "{png}"),
    "plain": (),
    "record": ("--record", "{dir}"),
    "snapshot": ("--snapshot", "{png}"),
}
#: What a receive-only bot does, as ``meshpeer join`` flags.
ROLES = {
    "recorder": ("--record", "{dir}"),
    "receiver": (),
    "viewer": ("--snapshot", "{png}"),
}
#: Allocator settings, as ``meshpeer join`` flags (``tuned``: its defaults).
VARIANTS = {
    "tuned": (),
    "glibc": ("--malloc-arenas", "0", "--malloc-trim", "0"),
    "fixed": ("--malloc-mmap-threshold", "128"),  # tuned, and no sliding mmap threshold
    "trim": ("--malloc-arenas", "0"),
    "arenas": ("--malloc-trim", "0"),
    "traced": (),  # tuned, under tracemalloc (PYTHONTRACEMALLOC=1): the Python heap's share
}
#: Growth allowed between the first sample after the warm-up and the last one.
MAX_GROWTH = 0.05
#: RSS slope allowed after the warm-up for a bot with the default settings (issue 19).
MAX_SLOPE_MIB_MIN = 0.05


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    stats: Path | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: Judged against MAX_SLOPE_MIB_MIN (bots with meshpeer join's default settings).
    judged: bool = False


def start(work: Path, args: argparse.Namespace) -> list[Proc]:
    port = free_port()
    # Every bot is in the one room "soak": more than --max-peers' default of 8.
    server = start_signaling(port, "--max-peers", "64")
    procs = [Proc("server", server)]
    wait_listening(server, port, 20)
    at = Place(work, f"ws://127.0.0.1:{port}/ws", args.interval)
    size = ("--width", str(args.width), "--height", str(args.height), "--fps", str(args.fps))
    for number, role in enumerate(args.senders, 1):
        name = f"bot{number}" if role == "full" else f"bot{number}-{role}"
        fill = {"dir": str(work / "recordings" / name), "png": str(work / f"{name}.png")}
        # --video/--audio given: a recorder sends nothing otherwise.
        flags = (*size, "--video", "synthetic", "--audio", "tone")
        procs.append(bot(at, name, (*flags, *(f.format(**fill) for f in SENDER_ROLES[role])), True))
    pairs = args.bots or [(r, v) for r in args.roles for v in args.variants]
    for role, variant in pairs:
        name = f"{role}-{variant}"
        fill = {"dir": str(work / "recordings" / name), "png": str(work / f"{name}.png")}
        flags = [f.format(**fill) for f in ROLES[role]] + ["--video", "none", "--audio", "none"]
        traced = args.tracemalloc or variant == "traced"
        env = {"PYTHONTRACEMALLOC": "1"} if traced else {}
        flags += VARIANTS[variant]
        procs.append(bot(at, name, tuple(flags), variant == "tuned", env))
    return procs


@dataclass(frozen=True)
class Place:
    """Where the bots of one run meet and write."""

    work: Path
    url: str
    interval: float


def bot(
    at: Place, name: str, flags: Sequence[str], judged: bool, env: dict[str, str] | None = None
) -> Proc:
    work = at.work
    stats = work / f"{name}.jsonl"
    command = [
        sys.executable, "-m", "peer", "join", at.url, "--room", "soak", "--id", name, "--quiet",
        "--stats-json", str(stats), "--stats-interval", str(at.interval), *flags,
    ]  # fmt: skip
    with (work / f"{name}.log").open("wb") as log:
        popen = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=os.environ | (env or {})
        )
    return Proc(name, popen, stats, judged=judged)


def sample(procs: list[Proc], started: float) -> None:
    at = round(time.monotonic() - started, 1)
    for proc in procs:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}")
        entry: dict[str, Any] = {
            "t": at,
            "rss_kib": rss_kib(proc.popen.pid),
            "fds": open_fds(proc.popen.pid),
        }
        record = last_json_line(proc.stats) if proc.stats is not None else None
        if record is not None:
            entry["tasks"] = record.get("tasks")
            entry["threads"] = record.get("threads")
            entry["fps"] = {p["peer"]: p["fps_in"] for p in record["peers"]}
            entry["first_frame_s"] = {p["peer"]: p["first_frame_s"] for p in record["peers"]}
            entry["packets_lost"] = sum(p["packets_lost"] for p in record["peers"])
            entry["memory"] = record.get("memory")
        proc.samples.append(entry)


def growth(values: list[float]) -> float:
    return (values[-1] - values[0]) / values[0] if values and values[0] else 0.0


def slope(
    samples: list[dict[str, Any]], kib: Callable[[dict[str, Any]], int | None]
) -> float | None:
    """Least-squares slope of ``kib(sample)`` in MiB per minute (None without two values)."""
    points = [(s["t"] / 60, v / 1024) for s in samples if (v := kib(s)) is not None]
    if len(points) < 2:
        return None
    return round(statistics.linear_regression(*zip(*points, strict=True)).slope, 4)


def memory_field(name: str) -> Callable[[dict[str, Any]], int | None]:
    """The bot's own ``memory`` figure ``name`` (KiB) of a sample, if its stats had it."""
    return lambda s: (s.get("memory") or {}).get(name)


def summarize(procs: list[Proc], warmup: float) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for proc in procs:
        kept = [s for s in proc.samples if s["t"] >= warmup]
        if len(kept) < 2:
            continue
        fps = [statistics.fmean(s["fps"].values()) for s in kept if s.get("fps")]
        summary[proc.name] = {
            "samples": len(kept),
            "rss_mib": [round(kept[0]["rss_kib"] / 1024, 1), round(kept[-1]["rss_kib"] / 1024, 1)],
            "rss_growth": round(growth([s["rss_kib"] for s in kept]), 4),
            "rss_slope_mib_min": slope(kept, lambda s: s["rss_kib"]),
            "malloc_used_slope": slope(kept, memory_field("malloc_used_kib")),
            "malloc_free_slope": slope(kept, memory_field("malloc_free_kib")),
            "python_heap_slope": slope(kept, memory_field("python_heap_kib")),
            "threads": [kept[0].get("threads"), kept[-1].get("threads")],
            "judged": proc.judged,
            "fds": [kept[0]["fds"], kept[-1]["fds"]],
            "fd_growth": round(growth([s["fds"] for s in kept]), 4),
            "tasks": [kept[0].get("tasks"), kept[-1].get("tasks")],
            "fps_mean": round(statistics.fmean(fps), 2) if fps else None,
            "fps_min": round(min(fps), 2) if fps else None,
            "fps_stdev": round(statistics.pstdev(fps), 2) if len(fps) > 1 else None,
        }
    return summary


def plot(procs: list[Proc], path: Path, warmup: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for index, proc in enumerate(procs):
        style = {"label": proc.name, "color": f"C{index}"}  # one colour per process
        t = [s["t"] / 60 for s in proc.samples]
        axes[0].plot(t, [s["rss_kib"] / 1024 for s in proc.samples], **style)
        axes[1].plot(t, [s["fds"] for s in proc.samples], **style)
        fps = [statistics.fmean(s["fps"].values()) if s.get("fps") else None for s in proc.samples]
        if any(v is not None for v in fps):
            axes[2].plot(t, fps, **style)
    for axis, label in zip(axes, ("RSS (MiB)", "open fds", "fps received (mean)"), strict=True):
        axis.set_ylabel(label)
        axis.axvline(warmup / 60, color="grey", linestyle=":")
        axis.legend(loc="lower right", fontsize="small")
        axis.grid(alpha=0.3)
    axes[2].set_xlabel("minutes (dotted: end of warm-up)")
    fig.suptitle("meshpeer soak: server, 3 bots sending, recording, snapshots; receive-only bots")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _names(known: dict[str, Any]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}, known: {', '.join(known)}")
        return names

    return parse


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = [tuple(n.split("-", 1)) for n in text.split(",") if n]
    for pair in pairs:
        if len(pair) != 2 or pair[0] not in ROLES or pair[1] not in VARIANTS:
            raise argparse.ArgumentTypeError(f"not ROLE-VARIANT: {'-'.join(pair)!r}")
    return [(role, variant) for role, variant in pairs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes before comparing")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument(
        "--senders",
        type=_names(SENDER_ROLES),
        default=["full"] * 3,
        help="one sending bot per name, of " + ",".join(SENDER_ROLES) + " (full: record, snapshot)",
    )
    parser.add_argument(
        "--roles",
        type=_names(ROLES),
        default=["recorder", "receiver"],
        help="of " + ",".join(ROLES),
    )
    parser.add_argument(
        "--variants", type=_names(VARIANTS), default=["tuned"], help="of " + ",".join(VARIANTS)
    )
    parser.add_argument(
        "--bots",
        type=_pairs,
        help="instead of --roles x --variants: ROLE-VARIANT,... (recorder-glibc,viewer-tuned)",
    )
    parser.add_argument(
        "--tracemalloc", action="store_true", help="the receive-only bots trace the Python heap"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args(argv)
    warmup = args.warmup * 60
    work = Path(tempfile.mkdtemp(prefix="meshpeer-soak-"))
    procs = start(work, args)
    started = time.monotonic()
    end = started + args.minutes * 60
    # Ctrl-C or SIGTERM ends the run early: the bots leave and what was sampled is summed up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while time.monotonic() < end:
            time.sleep(args.interval)
            sample(procs, started)
            now = procs[1].samples[-1]
            print(
                f"{now['t'] / 60:5.1f} min  server {procs[0].samples[-1]['rss_kib'] / 1024:.0f} MiB"
                f"  bot1 {now['rss_kib'] / 1024:.0f} MiB {now['fds']} fds "
                f"{now.get('tasks')} tasks fps {now.get('fps')}",
                file=sys.stderr,
                flush=True,
            )
    except KeyboardInterrupt:
        print("stopped early", file=sys.stderr)
    finally:  # the bots leave (finalising recordings), then the server stops
        for group in (procs[1:], procs[:1]):
            for proc in group:
                proc.popen.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.popen.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
    summary = summarize(procs, warmup)
    recordings = sorted(str(p) for p in (work / "recordings").rglob("*.mkv"))
    creep = [s["rss_slope_mib_min"] for s in summary.values() if s["judged"]]
    slope_met = bool(creep) and all(v is not None and v <= MAX_SLOPE_MIB_MIN for v in creep)
    passed = slope_met and all(
        s["rss_growth"] < MAX_GROWTH and s["fd_growth"] < MAX_GROWTH for s in summary.values()
    )
    print()
    print(
        "| process | RSS MiB after warm-up -> end | growth | RSS slope MiB/min | malloc used / "
        "free, Python heap: MiB/min | fds | threads | tasks | fps mean / min |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        fps = f"{s['fps_mean']} / {s['fps_min']}" if s["fps_mean"] is not None else "-"
        parts = (s["malloc_used_slope"], s["malloc_free_slope"], s["python_heap_slope"])
        inside = " / ".join("-" if v is None else f"{v:+.3f}" for v in parts)
        rss_slope = "-" if s["rss_slope_mib_min"] is None else f"{s['rss_slope_mib_min']:+.3f}"
        print(
            f"| {name} | {s['rss_mib'][0]} -> {s['rss_mib'][1]} | {s['rss_growth']:+.1%} | "
            f"{rss_slope} | {inside} | {s['fds'][0]} -> {s['fds'][1]} | "
            f"{s['threads'][0]} -> {s['threads'][1]} | {s['tasks'][0]} -> {s['tasks'][1]} | {fps} |"
        )
    print(f"\nRSS and fds grew less than {MAX_GROWTH:.0%} everywhere: {'yes' if passed else 'NO'}")
    print(
        f"RSS slope <= {MAX_SLOPE_MIB_MIN} MiB/min for every bot with the default settings: "
        f"{'yes' if slope_met else 'NO'}"
    )
    result = {
        "settings": vars(args) | {"output": str(args.output)},
        "load_average": os.getloadavg(),
        "summary": summary,
        "passed": passed,
        "slope_met": slope_met,
        "recordings": len(recordings),
        "samples": {p.name: p.samples for p in procs},
    }
    write_result(args.output, result)
    png = args.output.with_suffix(".png")
    plot(procs, png, warmup)
    print(f"wrote {png}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
