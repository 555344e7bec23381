"""Lip sync of a packets-to-file recording over minutes: |beep - flash| per minute and its
drift (issue 19: <= 45 ms, drift < 10 ms per minute over 10 minutes).

One process, loopback: a signaling server, a sender agent whose picture flashes and whose
audio beeps at the same instants every 2 s (``tests.media.lipsync``), and a recording agent
(``Recorder``, packets to file). After N minutes the file is decoded and each flash paired
with its beep; the table has, per minute, the pairs, mean and worst |beep - flash|, and the
drift: the slope of (beep - flash) over the whole run, in ms per minute.

    python benchmarks/lipsync.py [--minutes 10] [--width 320 --height 240 --fps 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.common import machine_info, write_result  # noqa: E402
from peer.agent import Agent  # noqa: E402
from peer.media.recorder import Recorder  # noqa: E402
from peer.media.sources import LocalMedia  # noqa: E402
from signaling.protocol import PeerId  # noqa: E402
from tests.media.lipsync import BeepTrack, FlashTrack, ShowClock, onsets  # noqa: E402
from tests.peer.helpers import frames_from  # noqa: E402
from tests.support import eventually, running_server  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "lipsync.json"
SENDER = PeerId("show")


async def record(args: argparse.Namespace, directory: Path) -> Path:
    clock = ShowClock()
    media = LocalMedia(
        FlashTrack(clock, width=args.width, height=args.height, fps=args.fps), BeepTrack(clock)
    )
    recorder = Recorder(directory)
    async with running_server() as server:
        sender = Agent(server.ws_url, room="bench", peer_id=SENDER, media=media)
        await sender.join()
        bot = Agent(server.ws_url, room="bench", peer_id=PeerId("rec"), recorder=recorder)
        await bot.join()
        try:
            await eventually(lambda: frames_from(bot, SENDER) >= 1, 30, "the sender's video")
            await asyncio.sleep(args.minutes * 60)
        finally:
            await bot.leave()
            await sender.leave()
            media.stop()
    (path, *_) = await recorder.close()
    return path


def summarise(path: Path) -> dict[str, Any]:
    found = onsets(path)
    pairs = found.pairs()
    minutes: list[dict[str, Any]] = []
    for minute in range(int(max((f for f, _ in pairs), default=0) // 60) + 1):
        offsets = [o * 1000 for f, o in pairs if minute * 60 <= f < (minute + 1) * 60]
        if offsets:
            minutes.append(
                {
                    "minute": minute + 1,
                    "pairs": len(offsets),
                    "mean_ms": round(float(np.mean(offsets)), 1),
                    "worst_abs_ms": round(max(abs(o) for o in offsets), 1),
                }
            )
    slope = 0.0
    if len(pairs) >= 2:
        times = np.array([f for f, _ in pairs]) / 60
        slope = float(np.polyfit(times, np.array([o for _, o in pairs]) * 1000, 1)[0])
    return {
        "flashes": len(found.flashes),
        "beeps": len(found.beeps),
        "pairs": len(pairs),
        "worst_abs_ms": round(max((abs(o) * 1000 for _, o in pairs), default=0.0), 1),
        "first_ms": round(pairs[0][1] * 1000, 1) if pairs else None,
        "drift_ms_per_min": round(slope, 2),
        "minutes": minutes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args()
    load, started = os.getloadavg(), time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        path = asyncio.run(record(args, Path(tmp)))
        summary = summarise(path)
    print(f"{'minute':>6} {'pairs':>5} {'mean ms':>8} {'worst |ms|':>10}")
    for row in summary["minutes"]:
        print(f"{row['minute']:>6} {row['pairs']:>5} {row['mean_ms']:>8} {row['worst_abs_ms']:>10}")
    print(
        f"pairs {summary['pairs']} of {summary['flashes']} flashes, first {summary['first_ms']} "
        f"ms, worst {summary['worst_abs_ms']} ms, drift {summary['drift_ms_per_min']} ms/min"
    )
    settings = {"minutes": args.minutes, "size": f"{args.width}x{args.height}", "fps": args.fps}
    result = {"settings": settings, **summary, "machine": machine_info(load, started)}
    write_result(RESULT, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
