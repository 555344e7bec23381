"""Does mouth-to-ear delay grow over a long call? ``--audio mic`` to ``--speaker`` for
minutes, a beep every few seconds, its delay measured beep by beep.

Real parts on loopback, as tests/peer/test_desktop_audio.py: a PulseAudio server of its own
(tests/pulse_server.py), a ``meshpeer serve`` process, agent A (``--audio mic:voice``, a
pipe source the script speaks into) and agent B (``--speaker spk``, a null sink whose
monitor ``parec`` records). The microphone runs ``--ppm`` fast against the speaker (the
script writes that much faster than real time): two sound cards' clocks, as at two desks,
which is what the speaker's drift following has to absorb. Growth is the median delay of
the last minute less that of the first (issue 20: < 40 ms over 10 minutes), and the trend of a
straight line through every beep's delay.

    ./dev bench speaker_drift [--minutes 10] [--ppm 200] [--period 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import free_port, machine_info, stop, wait_listening, write_result  # noqa: E402
from tests.pulse_server import PipeSource, onsets, pulse_server, recording  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "speaker_drift.json"


def join(url: str, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "peer", "join", url, "--room", "bench", "--id", name,
            "--video", "none", "--quiet", *extra]  # fmt: skip


def delays(said: list[float], heard: list[float]) -> list[tuple[float, float]]:
    """(when said, delay) for each beep heard within a second of being said."""
    found = []
    for moment in said:
        after = [h - moment for h in heard if 0 <= h - moment < 1.0]
        if after:
            found.append((moment, min(after)))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--ppm", type=float, default=200.0, help="microphone clock offset")
    parser.add_argument("--period", type=float, default=2.0, help="seconds between beeps")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.monotonic()
    with ExitStack() as stack:
        pulse = stack.enter_context(pulse_server())
        voice = PipeSource(pulse, speed=1 + args.ppm * 1e-6)
        voice.start()
        stack.callback(voice.stop)
        port = free_port()
        url = f"ws://127.0.0.1:{port}/ws"
        server = subprocess.Popen(
            [sys.executable, "-m", "peer", "serve", "--port", str(port), "--log-level", "WARNING"],
            cwd=REPO,
        )
        stack.callback(stop, server)
        wait_listening(server, port)
        agents = [
            subprocess.Popen(join(url, "a", "--audio", "mic:voice"), cwd=REPO, env=pulse.env),
            subprocess.Popen(
                join(url, "b", "--audio", "none", "--speaker", "spk"), cwd=REPO, env=pulse.env
            ),
        ]
        for agent in agents:
            stack.callback(stop, agent)
        recorder = stack.enter_context(recording(pulse))
        voice.beep_every(args.period)
        time.sleep(args.minutes * 60)
        heard = onsets(recorder.take())
        measured = delays(list(voice.onsets), heard)
        if len(measured) < 4:
            print(f"only {len(measured)} beeps heard of {len(voice.onsets)}", file=sys.stderr)
            return 1
        begin = measured[0][0]
        first = [d for t, d in measured if t - begin < 60] or [measured[0][1]]
        last = [d for t, d in measured if measured[-1][0] - t < 60] or [measured[-1][1]]
        every = [d for _, d in measured]
        result: dict[str, Any] = {
            "command": "./dev bench speaker_drift " + " ".join(sys.argv[1:]),
            "minutes": args.minutes,
            "microphone_fast_ppm": args.ppm,
            "beeps_said": len(voice.onsets),
            "beeps_heard": len(measured),
            "delay_ms": {
                "first_minute_median": round(1000 * statistics.median(first), 1),
                "last_minute_median": round(1000 * statistics.median(last), 1),
                "growth": round(1000 * (statistics.median(last) - statistics.median(first)), 1),
                # Least squares over every beep: less at the mercy of one noisy minute.
                "trend_per_10_min": round(
                    1000
                    * 600
                    * statistics.linear_regression([t - begin for t, _ in measured], every).slope,
                    1,
                ),
                "min": round(1000 * min(every), 1),
                "max": round(1000 * max(every), 1),
                "median": round(1000 * statistics.median(every), 1),
            },
            "per_minute_median_ms": [
                round(1000 * statistics.median(chunk), 1)
                for minute in range(int(args.minutes) + 1)
                if (chunk := [d for t, d in measured if minute <= (t - begin) / 60 < minute + 1])
            ],
            "machine": machine_info(load_before, started),
        }
        print(result)
        write_result(RESULT, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
