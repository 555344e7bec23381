"""VP8 encoding cost of one 640x480@30 stream: aiortc's encoder, ours, and ffmpeg's libvpx.

All on the same frames, made beforehand (the synthetic test pattern, its clock text on a
fixed 30 fps timeline so every run draws the same frames, and the same frames with
camera-like grain), at the same bitrate:

- aiortc's ``Vp8Encoder.encode`` (libvpx realtime, CBR, ``cpu-used -6``, temporal denoiser
  4, plus RTP packetization): what per-peer encoding costs for each connection;
- our ``VideoEncoder`` with the default ``Vp8Settings`` and a few alternatives;
- the ``ffmpeg`` command-line tool, libvpx in realtime mode, reading the raw frames from a
  file and writing WebM: its default ``cpu-used`` (1) and 6, 8, 16 (a positive value in
  realtime mode lets libvpx pick its speed from the time each frame took), one thread as
  ours; once with ffmpeg's own thread count; once with our exact options; and a run that
  only reads the frames (startup and reading, not subtracted from the others).

CPU: ``time.process_time()`` around the encode calls in this process (no other thread
works meanwhile); for ffmpeg, the child's user + system time (``RUSAGE_CHILDREN``
deltas), the whole process. Each measurement is repeated (interleaved) and the median
kept. Quality: every output is decoded (PyAV, libvpx) and compared with its input: kbps
of the VP8 frames, mean per-frame PSNR over Y, U and V; for the grainy frames also
against the clean ones (what a denoiser is for).

    ./dev bench encoder_cost [--frames 300] [--repeats 3] [--bitrate 500000]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from unittest import mock

import av
import av.logging
import numpy as np
import numpy.typing as npt
from aiortc.codecs import vpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from benchmarks.media import test_card_frames  # noqa: E402
from peer.media import synthetic  # noqa: E402
from peer.media.encoders import VideoEncoder, Vp8Settings  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FPS = 30
Planes = npt.NDArray[np.uint8]
#: The ffmpeg row the conclusion compares our default with (the issue's command).
FFMPEG_REFERENCE = "ffmpeg realtime: cpu-used 8, 1 thread"


@dataclass
class Source:
    name: str
    frames: list[av.VideoFrame]
    planes: list[Planes]  # the frames as I420 arrays, for PSNR
    clean: list[Planes] | None = None  # the frames before grain was added
    yuv: Path | None = None  # the raw file ffmpeg reads


@dataclass
class Output:
    """What one encoding run gave: CPU seconds and the VP8 frames by input index."""

    cpu: float
    packets: dict[int, bytes] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Case:
    name: str
    group: str  # "aiortc", "ours", "ffmpeg"
    run: Callable[[Source], Output]
    settings: dict[str, Any]


class FrameClock:
    """Stands in for ``datetime`` in the synthetic source, which draws the time on every frame:
    1/30 s more at each frame from a fixed start, so every run encodes the same frames."""

    def __init__(self) -> None:
        self._next = datetime(2025, 1, 1, 12, 0, 0)

    def now(self) -> datetime:
        now, self._next = self._next, self._next + timedelta(seconds=1 / FPS)
        return now


def grainy(clean: list[av.VideoFrame], seed: int = 1) -> list[av.VideoFrame]:
    """``clean`` with uniform grain of +-12 on every sample, as ``benchmarks/media.py``."""
    rng = np.random.default_rng(seed)
    frames = []
    for source in clean:
        planes = source.to_ndarray()
        grain = rng.integers(-12, 13, size=planes.shape, dtype=np.int16)
        noisy = np.clip(planes.astype(np.int16) + grain, 0, 255).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(noisy, format="yuv420p")
        frame.pts, frame.time_base = source.pts, source.time_base
        frames.append(frame)
    return frames


def fresh(frames: Sequence[av.VideoFrame]) -> None:
    """Undo what a previous run left on the shared frames (a keyframe request, a time base)."""
    for index, frame in enumerate(frames):
        frame.pict_type = av.video.frame.PictureType.NONE
        frame.pts, frame.time_base = index * 3000, Fraction(1, 90_000)


def timed(loop: Callable[[], None]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        loop()
        return time.process_time() - start
    finally:
        gc.enable()


def ours(settings: Vp8Settings, bitrate: int) -> Callable[[Source], Output]:
    def run(source: Source) -> Output:
        fresh(source.frames)
        encoder = VideoEncoder("video/vp8", bitrate, settings)
        produced: list[list[av.Packet]] = []

        def loop() -> None:
            for index, frame in enumerate(source.frames):
                produced.append(encoder.encode(frame, keyframe=index == 0))

        cpu = timed(loop)
        return Output(cpu, {i: bytes(p[0]) for i, p in enumerate(produced) if p})

    return run


def aiortc_encoder(bitrate: int) -> Callable[[Source], Output]:
    def run(source: Source) -> Output:
        fresh(source.frames)
        encoder = vpx.Vp8Encoder()
        encoder.target_bitrate = bitrate
        produced: list[list[bytes]] = []

        def loop() -> None:
            for frame in source.frames:
                produced.append(encoder.encode(frame)[0])

        cpu = timed(loop)
        packets = {
            i: b"".join(vpx.vp8_depayload(p) for p in payloads)
            for i, payloads in enumerate(produced)
            if payloads
        }
        return Output(cpu, packets)

    return run


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ffmpeg(options: Sequence[str], encode: bool = True) -> Callable[[Source], Output]:
    def run(source: Source) -> Output:
        assert source.yuv is not None
        width, height = source.frames[0].width, source.frames[0].height
        out = source.yuv.with_suffix(".webm")
        command = [
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}",
            "-r", str(FPS), "-i", str(source.yuv),
        ]  # fmt: skip
        if encode:
            command += ["-c:v", "libvpx", "-deadline", "realtime", *options, "-f", "webm", str(out)]
        else:
            command += [*options, "-f", "null", "-"]
        before = children_cpu()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        cpu = children_cpu() - before
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip().splitlines()
            return Output(cpu, error=(error or [f"exit {done.returncode}"])[-1])
        if not encode:
            return Output(cpu)
        packets: dict[int, bytes] = {}
        with av.open(str(out)) as container:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None and packet.time_base is not None:
                    packets[round(packet.pts * packet.time_base * FPS)] = bytes(packet)
        out.unlink()
        return Output(cpu, packets)

    return run


def psnr(reference: Planes, decoded: Planes) -> float:
    mse = float(np.mean((reference.astype(np.int16) - decoded.astype(np.int16)) ** 2))
    return 99.0 if mse == 0 else 10 * math.log10(255**2 / mse)


def quality(source: Source, packets: dict[int, bytes]) -> dict[str, Any]:
    """kbps, mean PSNR, frames the encoder skipped (shown as the previous one, as a player)."""
    decoder = av.CodecContext.create("libvpx", "r")
    decoder.thread_count = 1
    shown: Planes | None = None
    scores, clean_scores, skipped = [], [], 0
    for index, reference in enumerate(source.planes):
        data = packets.get(index)
        if data is None:
            skipped += 1
        else:
            for frame in decoder.decode(av.Packet(data)):
                shown = frame.to_ndarray(format="yuv420p")
        if shown is None:
            continue
        scores.append(psnr(reference, shown))
        if source.clean is not None:
            clean_scores.append(psnr(source.clean[index], shown))
    seconds = len(source.planes) / FPS
    result = {
        "kbps": round(sum(len(p) for p in packets.values()) * 8 / seconds / 1000, 1),
        "psnr_db": round(statistics.fmean(scores), 2) if scores else None,
        "frames_skipped": skipped,
    }
    if clean_scores:
        result["psnr_vs_clean_db"] = round(statistics.fmean(clean_scores), 2)
    return result


def libvpx_version_ours() -> str:
    """The libvpx PyAV loads (its encoder logs the version when it opens)."""
    av.logging.set_level(av.logging.INFO)
    try:
        with av.logging.Capture() as logs:
            frame = av.VideoFrame.from_ndarray(np.zeros((96, 64), np.uint8), format="yuv420p")
            frame.pts, frame.time_base = 0, Fraction(1, FPS)
            VideoEncoder("video/vp8", 100_000).encode(frame, keyframe=True)
    finally:
        av.logging.set_level(None)
    found = [m.strip() for _, name, m in logs if name == "libvpx" and m.strip().startswith("v")]
    return found[0] if found else "?"


def libvpx_version_ffmpeg() -> str:
    command = [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "info", "-f", "lavfi",
        "-i", "color=size=64x64:rate=30", "-frames:v", "1", "-c:v", "libvpx", "-f", "null", "-",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    found = re.search(r"\[libvpx @ [^\]]*\] (v\d\S*)", done.stderr)
    return found.group(1) if found else "?"


def cases(bitrate: int, with_ffmpeg: bool) -> list[Case]:
    rate = str(bitrate)
    default = Vp8Settings()
    variants = [
        ("ours: default", default),
        ("ours: noise_sensitivity 4", Vp8Settings(noise_sensitivity=4)),
        ("ours: cpu_used -8", Vp8Settings(cpu_used=-8)),
        ("ours: cpu_used -12", Vp8Settings(cpu_used=-12)),
        ("ours: cpu_used -16", Vp8Settings(cpu_used=-16)),
        ("ours: cpu_used 8 (libvpx picks its speed)", Vp8Settings(cpu_used=8)),
    ]
    found = [
        Case(
            "aiortc Vp8Encoder.encode (cpu-used -6, noise 4, packetized)",
            "aiortc",
            aiortc_encoder(bitrate),
            {"cpu_used": -6, "noise_sensitivity": 4},
        )
    ]
    for name, vp8 in variants:
        label = f"{name} (cpu_used {vp8.cpu_used}, noise {vp8.noise_sensitivity})"
        if vp8 == default:
            name = label
        found.append(Case(name, "ours", ours(vp8, bitrate), vars(vp8)))
    if not with_ffmpeg:
        return found
    one = ["-b:v", rate, "-threads", "1"]
    threads = f"default threads ({os.cpu_count()})"  # ffmpeg's -threads auto
    ffmpeg_cases = [
        ("ffmpeg: read frames only, no encoding", [], False),
        ("ffmpeg realtime: cpu-used default (1), 1 thread", one, True),
        ("ffmpeg realtime: cpu-used 6, 1 thread", ["-cpu-used", "6", *one], True),
        (FFMPEG_REFERENCE, ["-cpu-used", "8", *one], True),
        ("ffmpeg realtime: cpu-used 16, 1 thread", ["-cpu-used", "16", *one], True),
        (f"ffmpeg realtime: cpu-used 8, its {threads}", ["-cpu-used", "8", "-b:v", rate], True),
        (
            "ffmpeg realtime: our options (cpu-used -6, CBR, noise 0)",
            [
                "-cpu-used", "-6", "-b:v", rate, "-minrate", rate, "-maxrate", rate,
                "-bufsize", rate, "-qmin", "2", "-qmax", "56", "-g", "3000",
                "-lag-in-frames", "0", "-noise-sensitivity", "0", "-overshoot-pct", "15",
                "-undershoot-pct", "100", "-static-thresh", "1", "-threads", "1",
            ],
            True,
        ),
    ]  # fmt: skip
    for name, options, encode in ffmpeg_cases:
        found.append(Case(name, "ffmpeg", ffmpeg(options, encode), {"ffmpeg_options": options}))
    return found


def make_sources(frames: int, work: Path | None) -> list[Source]:
    with mock.patch.object(synthetic, "datetime", FrameClock()):
        clean = test_card_frames(640, 480, frames, noise=False)
    clean_planes = [f.to_ndarray() for f in clean]
    noisy = grainy(clean)
    sources = [
        Source("test pattern", clean, clean_planes),
        Source("test pattern + grain", noisy, [f.to_ndarray() for f in noisy], clean_planes),
    ]
    if work is not None:
        for number, source in enumerate(sources):
            source.yuv = work / f"source{number}.yuv"
            with source.yuv.open("wb") as raw:
                for planes in source.planes:
                    raw.write(planes.tobytes())
    return sources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case; median kept")
    parser.add_argument("--bitrate", type=int, default=vpx.DEFAULT_BITRATE)
    parser.add_argument("--output", type=Path, default=RESULTS / "encoder_cost.json")
    args = parser.parse_args()

    with_ffmpeg = shutil.which("ffmpeg") is not None
    if not with_ffmpeg:
        print(
            "ffmpeg NOT FOUND: the ffmpeg rows are left out (apt-get install ffmpeg; "
            "./dev bench encoder_cost installs it)",
            file=sys.stderr,
        )
    versions = {"pyav_libvpx": libvpx_version_ours()}
    if with_ffmpeg:
        versions["ffmpeg_libvpx"] = libvpx_version_ffmpeg()
    all_cases = cases(args.bitrate, with_ffmpeg)
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="meshpeer-encoder-cost-") as work:
        sources = make_sources(args.frames, Path(work) if with_ffmpeg else None)
        for source in sources:
            runs: dict[str, list[tuple[Output, dict[str, Any]]]] = {c.name: [] for c in all_cases}
            for repeat in range(args.repeats):
                # Interleaved, and in turn reversed, so a noisy minute hits every case alike.
                order = all_cases if repeat % 2 == 0 else all_cases[::-1]
                for case in order:
                    output = case.run(source)
                    measured = quality(source, output.packets) if output.packets else {}
                    runs[case.name].append((output, measured))
                    print(
                        f"{source.name} #{repeat + 1}: {case.name}: "
                        f"{1000 * output.cpu / args.frames:.2f} ms/frame "
                        f"{measured.get('kbps', '-')} kbps {measured.get('psnr_db', '-')} dB"
                        + (f" ERROR {output.error}" if output.error else ""),
                        file=sys.stderr,
                        flush=True,
                    )
            for case in all_cases:
                rows.append(summarize(source, case, runs[case.name], args.frames))
    elapsed = time.monotonic() - started
    print_tables(rows, sources, args, versions)
    conclusion = conclude(rows, sources, with_ffmpeg)
    print(f"\n{conclusion}")
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "size": "640x480",
        "fps": FPS,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "elapsed_s": round(elapsed, 1),
        "libvpx": versions,
        "ffmpeg_found": with_ffmpeg,
        "rows": rows,
        "conclusion": conclusion,
    }
    write_result(args.output, result)
    return 0


def summarize(
    source: Source, case: Case, runs: list[tuple[Output, dict[str, Any]]], frames: int
) -> dict[str, Any]:
    errors = [o.error for o, _ in runs if o.error]
    cpu = statistics.median(o.cpu for o, _ in runs)
    row: dict[str, Any] = {
        "source": source.name,
        "setting": case.name,
        "group": case.group,
        "options": case.settings,
        "cpu_ms_per_frame": round(1000 * cpu / frames, 3),
        "percent_of_core_at_30fps": round(100 * cpu / frames * FPS, 1),
        "cpu_ms_per_frame_runs": [round(1000 * o.cpu / frames, 3) for o, _ in runs],
    }
    measured = [m for _, m in runs if m]
    for key in ("kbps", "psnr_db", "psnr_vs_clean_db", "frames_skipped"):
        values = [m[key] for m in measured if m.get(key) is not None]
        row[key] = round(statistics.median(values), 2) if values else None
    if errors:
        row["error"] = errors[0]
    return row


def print_tables(
    rows: list[dict[str, Any]],
    sources: list[Source],
    args: argparse.Namespace,
    versions: dict[str, str],
) -> None:
    print(
        f"\nVP8 640x480@{FPS}, {args.frames} frames, {args.bitrate // 1000} kbps target; "
        f"medians of {args.repeats} runs; {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.1f}; libvpx {', '.join(f'{k} {v}' for k, v in versions.items())}"
    )
    for source in sources:
        with_clean = source.clean is not None
        print(f"\n{source.name}\n")
        header = "| setting | ms CPU/frame | % of a core at 30 fps | kbps | PSNR dB |"
        print(header + (" PSNR vs clean dB |" if with_clean else ""))
        print("|---|---|---|---|---|" + ("---|" if with_clean else ""))
        for row in rows:
            if row["source"] != source.name:
                continue

            def cell(key: str, row: dict[str, Any] = row) -> str:
                return "-" if row.get(key) is None else f"{row[key]:g}"

            line = (
                f"| {row['setting']} | {row['cpu_ms_per_frame']:.2f} | "
                f"{row['percent_of_core_at_30fps']:.1f} | {cell('kbps')} | {cell('psnr_db')} |"
            )
            if with_clean:
                line += f" {cell('psnr_vs_clean_db')} |"
            if row.get("error"):
                line += f" failed: {row['error']}"
            print(line)


def conclude(rows: list[dict[str, Any]], sources: list[Source], with_ffmpeg: bool) -> str:
    """One line: our default against ffmpeg realtime (the issue's command), every source."""

    def pick(prefix: str) -> list[dict[str, Any]]:
        found = [r for s in sources for r in rows if r["source"] == s.name]
        return [r for r in found if r["setting"].startswith(prefix) and not r.get("error")]

    def span(picked: list[dict[str, Any]], key: str = "percent_of_core_at_30fps") -> str:
        return "/".join(f"{r[key]:g}" for r in picked)

    names = "/".join(s.name for s in sources)
    mine = pick("ours: default")
    head = f"Conclusion ({names}): our default VP8 setting costs {span(mine)}% of a core"
    theirs = pick(FFMPEG_REFERENCE)
    if not with_ffmpeg or len(theirs) != len(mine):
        return f"{head}; no ffmpeg results, so no comparison with ffmpeg's libvpx."
    gaps = [
        m["percent_of_core_at_30fps"] - t["percent_of_core_at_30fps"]
        for m, t in zip(mine, theirs, strict=True)
    ]
    psnr_gaps = [
        (m["psnr_db"] or 0) - (t["psnr_db"] or 0) for m, t in zip(mine, theirs, strict=True)
    ]
    verdict = (
        "ours is the cheaper, no gap to close"
        if all(g < 0 for g in gaps)
        else "ours costs more where the gap is positive"
    )
    same = pick("ffmpeg realtime: our options")
    return (
        f"{head}, ffmpeg realtime -cpu-used 8 (1 thread) {span(theirs)}% "
        f"(ours minus ffmpeg: {'/'.join(f'{g:+.1f}' for g in gaps)} points, PSNR "
        f"{'/'.join(f'{g:+.2f}' for g in psnr_gaps)} dB): {verdict}; our options through "
        f"ffmpeg {span(same)}%."
    )


if __name__ == "__main__":
    sys.exit(main())
