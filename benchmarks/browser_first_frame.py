"""Time from join to first video frame: browsers and bots, in both directions, same run.

A participant is already in a fresh room; a newcomer joins (t0 = the newcomer sends
``join``). For each pair we measure when the newcomer shows the first frame of the one
already there ("to newcomer") and when the one already there shows the newcomer's
("to existing"). A browser's first frame is its video element getting a picture; a bot's
is its first decoded frame reaching the agent. Browsers are Debian's headless Chromium with
a fake camera; "viewer" is a page without camera permission (mDNS host candidates). The
server and the bots run in this process, each browser in its own. Loopback only.

``--explain`` also times each receiver's steps: connected and shown everywhere, and in a bot
the first video RTP packet, the first complete frame, its release by aiortc's jitter buffer
and its decoding, with probes on aiortc's receiver internals (diagnosis only).

    ./dev bench browser_first_frame [--reps 5] [--explain] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.async_api import Browser, async_playwright  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from peer import events as ev  # noqa: E402
from tests.browser.bots import Bot, running_bot  # noqa: E402
from tests.browser.pages import RoomPage, launch, open_room_page  # noqa: E402
from tests.support import RunningServer, eventually, running_server  # noqa: E402

log = logging.getLogger("browser_first_frame")

#: (first in the room, newcomer): "browser" has a camera, "viewer" has none, "bot" is the agent.
SCENARIOS: list[tuple[str, str]] = [
    ("browser", "browser"),
    ("browser", "bot"),
    ("bot", "browser"),
    ("bot", "bot"),
    ("viewer", "bot"),
    ("bot", "viewer"),
    ("viewer", "browser"),
    ("browser", "viewer"),
]
TIMEOUT = 30.0
#: A bot receiver's steps: ICE+DTLS up, first video RTP packet, the packet with the marker
#: bit that completes the first frame, aiortc's jitter buffer releasing it to the decoder,
#: the decoder's first picture, and the agent getting it. Pages: connected and shown only.
RECEIVE_STEPS = ("connected", "first_packet", "frame_complete", "released", "decoded", "shown")


class AiortcProbes:
    """When the one bot's video receiver got its first RTP packet, frame and picture.

    Wraps three aiortc internals for the run (``RTCRtpReceiver._handle_rtp_packet``,
    ``JitterBuffer.add``, ``rtcrtpreceiver.get_decoder``): diagnosis only.
    """

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def mark(self, key: str) -> None:
        self.marks.setdefault(key, time.time())

    def install(self) -> None:
        receiver_module: Any = importlib.import_module("aiortc.rtcrtpreceiver")
        jitter_module: Any = importlib.import_module("aiortc.jitterbuffer")
        JitterBuffer = jitter_module.JitterBuffer
        probes = self
        handle = receiver_module.RTCRtpReceiver._handle_rtp_packet
        add = JitterBuffer.add
        get_decoder = receiver_module.get_decoder

        async def handle_rtp(self: Any, packet: Any, arrival_time_ms: int) -> None:
            if getattr(self, "_RTCRtpReceiver__kind", None) == "video" and packet.payload:
                probes.mark("first_packet")
                if packet.marker:
                    probes.mark("frame_complete")
            await handle(self, packet, arrival_time_ms)

        def add_packet(self: Any, packet: Any) -> Any:
            pli, frame = add(self, packet)
            if frame is not None and getattr(self, "_is_video", False):
                probes.mark("released")
            return pli, frame

        def decoder_for(codec: Any) -> Any:
            decoder: Any = get_decoder(codec)
            if codec.mimeType.startswith("video/"):
                decode = decoder.decode

                def timed_decode(encoded: Any) -> Any:
                    frames = decode(encoded)
                    if frames:
                        probes.mark("decoded")
                    return frames

                decoder.decode = timed_decode
            return decoder

        receiver_module.RTCRtpReceiver._handle_rtp_packet = handle_rtp
        JitterBuffer.add = add_packet
        receiver_module.get_decoder = decoder_for


@dataclass
class Participant:
    """A browser page or a bot, with the clock readings the benchmark needs (epoch seconds)."""

    name: str
    kind: str
    page: RoomPage | None = None
    bot: Bot | None = None

    @property
    def sends_video(self) -> bool:
        return self.kind != "viewer"

    async def join_sent_at(self) -> float:
        if self.bot is not None:
            return self.bot.join_sent_at
        assert self.page is not None
        snap = await self.page.wait_joined()
        return float(snap["joinSentAt"]) / 1000

    async def first_frame_at(self, peer: str) -> float | None:
        if self.bot is not None:
            return self.bot.first_frames.get((peer, "video"))
        assert self.page is not None
        value = (await self.page.snapshot())["firstFrameAt"].get(peer)
        return float(value) / 1000 if value is not None else None

    async def steps(self, peer: str) -> dict[str, float]:
        """Epoch seconds at which this side reached each step of its connection to ``peer``."""
        out: dict[str, float] = {}
        if self.bot is not None:
            for at, event in self.bot.events:
                if isinstance(event, ev.Joined):
                    out.setdefault("joined", at)
                elif isinstance(event, ev.ConnectionStateChanged) and event.peer == peer:
                    out.setdefault(str(event.state), at)
        elif self.page is not None:
            snap = await self.page.snapshot()
            out = {k: v / 1000 for k, v in snap["times"].get(peer, {}).items()}
        return out


def after(t0: float, stamps: dict[str, float]) -> dict[str, float]:
    return {k: round((v - t0) * 1000, 1) for k, v in stamps.items() if v >= t0}


@dataclass
class Sample:
    first: str
    newcomer: str
    to_newcomer_ms: float | None  # the newcomer shows the first frame of the one already there
    to_existing_ms: float | None  # the one already there shows the newcomer's first frame
    newcomer_steps: dict[str, float] = field(default_factory=dict)
    existing_steps: dict[str, float] = field(default_factory=dict)
    #: "to newcomer"/"to existing" -> the receiver's RECEIVE_STEPS, ms after t0 (--explain)
    receive_steps: dict[str, dict[str, float]] = field(default_factory=dict)


class Bench:
    def __init__(
        self,
        server: RunningServer,
        camera: Browser,
        no_camera: Browser,
        probes: AiortcProbes | None,
    ) -> None:
        self.server = server
        self.browsers = {"browser": camera, "viewer": no_camera}
        self.probes = probes
        self.counter = 0

    @asynccontextmanager
    async def participant(self, kind: str, name: str, room: str) -> AsyncIterator[Participant]:
        if kind == "bot":
            async with running_bot(self.server.ws_url, name, room=room, stats_interval=None) as bot:
                yield Participant(name, kind, bot=bot)
            return
        context = await self.browsers[kind].new_context()
        try:
            page = await open_room_page(context, self.server.http_url, peer_id=name, room=room)
            yield Participant(name, kind, page=page)
        finally:
            await context.close()

    async def run_once(self, first_kind: str, newcomer_kind: str) -> Sample:
        self.counter += 1
        room = f"bench-{self.counter}"
        one_bot = [first_kind, newcomer_kind].count("bot") == 1
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(self.participant(first_kind, "first", room))
            await first.join_sent_at()  # in the room before the newcomer comes
            if self.probes is not None:
                self.probes.marks.clear()
            newcomer = await stack.enter_async_context(
                self.participant(newcomer_kind, "newcomer", room)
            )
            t0 = await newcomer.join_sent_at()

            async def frame(receiver: Participant, sender: Participant) -> float | None:
                if not sender.sends_video:
                    return None
                if receiver.page is not None:
                    # Polled inside the page (each animation frame): no round trips through
                    # the Playwright driver that would load this process' event loop.
                    await receiver.page.page.wait_for_function(
                        "(peer) => meshpeer.snapshot().firstFrameAt[peer] !== undefined",
                        arg=sender.name,
                        timeout=TIMEOUT * 1000,
                    )
                at = await eventually(
                    lambda: receiver.first_frame_at(sender.name),
                    TIMEOUT,
                    f"{receiver.kind} {receiver.name} showing {sender.name}",
                    interval=0.005,
                )
                return round((at - t0) * 1000, 1)

            to_newcomer, to_existing = await asyncio.gather(
                frame(newcomer, first), frame(first, newcomer)
            )
            sample = Sample(
                first_kind,
                newcomer_kind,
                to_newcomer,
                to_existing,
                after(t0, await newcomer.steps(first.name)),
                after(t0, await first.steps(newcomer.name)),
            )
            if self.probes is not None:
                for which, receiver, sender, shown in (
                    ("to newcomer", newcomer, first, to_newcomer),
                    ("to existing", first, newcomer, to_existing),
                ):
                    if shown is None:
                        continue
                    steps = await receiver.steps(sender.name)
                    stamps = {"connected": steps["connected"]} if "connected" in steps else {}
                    if receiver.bot is not None and one_bot:
                        stamps.update(self.probes.marks)
                    sample.receive_steps[which] = {**after(t0, stamps), "shown": shown}
            return sample


def label(sender: str, receiver: str) -> str:
    return f"{sender} → {receiver}"


def directions(first: str, newcomer: str) -> list[tuple[str, str, str]]:
    """(which, sender, receiver) of the two media directions of a scenario."""
    return [("to newcomer", first, newcomer), ("to existing", newcomer, first)]


def summarize(samples: list[Sample]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for first, newcomer in SCENARIOS:
        mine = [s for s in samples if (s.first, s.newcomer) == (first, newcomer)]
        for which, sender, receiver in directions(first, newcomer):
            attr = "to_newcomer_ms" if which == "to newcomer" else "to_existing_ms"
            values = [v for v in (getattr(s, attr) for s in mine) if v is not None]
            if not values:
                continue
            row: dict[str, Any] = {
                "scenario": f"{newcomer} joins {first}'s room",
                "direction": label(sender, receiver),
                "which": which,
                "median_ms": round(statistics.median(values), 1),
                "min_ms": min(values),
                "max_ms": max(values),
                "n": len(values),
            }
            steps = [s.receive_steps[which] for s in mine if which in s.receive_steps]
            if steps:
                row["receive_steps_median_ms"] = {
                    key: round(statistics.median(st[key] for st in steps if key in st), 1)
                    for key in RECEIVE_STEPS
                    if any(key in st for st in steps)
                }
            rows.append(row)
    return rows


def median_steps(mine: list[Sample], side: str) -> dict[str, float]:
    keys: set[str] = set()
    for s in mine:
        keys |= set(getattr(s, side))
    out = {}
    for key in keys:
        values = [getattr(s, side)[key] for s in mine if key in getattr(s, side)]
        out[key] = round(statistics.median(values), 1)
    return dict(sorted(out.items(), key=lambda kv: kv[1]))


def print_tables(rows: list[dict[str, Any]]) -> None:
    header = f"{'scenario':30} {'media':36} {'median ms':>10} {'min':>8} {'max':>8} {'n':>3}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['scenario']:30} {r['direction'] + ' (' + r['which'] + ')':36} "
            f"{r['median_ms']:>10.1f} {r['min_ms']:>8.1f} {r['max_ms']:>8.1f} {r['n']:>3}"
        )
    explained = [r for r in rows if "receive_steps_median_ms" in r]
    if not explained:
        return
    print("\nreceiver's steps, median ms after the newcomer's join (-: not measured there):")
    header = f"{'scenario':30} {'media':22}" + "".join(f"{k:>13}" for k in RECEIVE_STEPS)
    print(header)
    print("-" * len(header))
    for r in explained:
        steps = r["receive_steps_median_ms"]
        cells = "".join(f"{steps[k]:>13.1f}" if k in steps else f"{'-':>13}" for k in RECEIVE_STEPS)
        print(f"{r['scenario']:30} {r['direction']:22}{cells}")


async def run(reps: int, scenarios: list[tuple[str, str]], explain: bool) -> dict[str, Any]:
    probes = AiortcProbes() if explain else None
    if probes is not None:
        probes.install()
    samples: list[Sample] = []
    async with running_server() as server, async_playwright() as pw:
        camera, no_camera = await launch(pw), await launch(pw, camera=False)
        try:
            bench = Bench(server, camera, no_camera, probes)
            await bench.run_once("browser", "browser")  # warm-up: caches, codecs, JIT
            await bench.run_once("browser", "bot")
            for rep in range(reps):
                for first, newcomer in scenarios:
                    sample = await bench.run_once(first, newcomer)
                    log.info("rep %d %s", rep + 1, sample)
                    samples.append(sample)
        finally:
            await camera.close()
            await no_camera.close()
    negotiation = {}
    for first, newcomer in scenarios:
        mine = [s for s in samples if (s.first, s.newcomer) == (first, newcomer)]
        negotiation[f"{newcomer} joins {first}'s room"] = {
            "newcomer": median_steps(mine, "newcomer_steps"),
            "existing": median_steps(mine, "existing_steps"),
        }
    return {
        "benchmark": "browser_first_frame",
        "reps": reps,
        "explain": explain,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": summarize(samples),
        "negotiation_steps_median_ms": negotiation,
        "samples": [asdict(s) for s in samples],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per scenario")
    parser.add_argument("--explain", action="store_true", help="time each receiver's steps")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "browser_first_frame.json"
    )
    parser.add_argument(
        "--only", help="comma-separated scenarios FIRST:NEWCOMER, e.g. browser:bot,bot:browser"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    scenarios = SCENARIOS
    if args.only:
        scenarios = [(x.split(":")[0], x.split(":")[-1]) for x in args.only.split(",")]
    result = asyncio.run(run(args.reps, scenarios, args.explain))
    print_tables(result["rows"])
    print("\nnegotiation steps (median ms after the newcomer's join):")
    for scenario, sides in result["negotiation_steps_median_ms"].items():
        print(f"  {scenario}: newcomer {sides['newcomer']}  existing {sides['existing']}")
    print()
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
