"""Data channels against the signaling relay, and the media gap of renegotiation (issue 11).

1. Throughput: a fixed volume (16 MiB) one way, in messages of 16383 bytes (the largest
   binary message that is one frame) and of 256 KiB (cut into 17 frames and joined again),
   for agent -> agent, agent -> Chromium page and page -> agent on the ``meshpeer`` data
   channel, and agent -> agent as application messages relayed by the signaling server
   (the same bytes, base64 in a JSON field). MB/s (10^6 bytes) at the receiver: bytes after
   the first message over the time from the first message received to the last. Every
   message is checked byte for byte (message i is a ramp mod 251 starting at i, so loss,
   reordering and corruption all show). Senders respect flow control: the agent keeps at
   most 32 messages in its queue (``DataLimits.queue_messages`` is 64), the page at most 16
   unfinished ``sendData`` calls (its limit is 64), the relay sender waits for its WebSocket;
   any drop is reported.
2. Round trip: 100-byte text messages, one at a time, echoed by the other side, p50/p99:
   agent <-> agent and agent <-> page, on the data channel and through the signaling server
   (application messages). The four paths take turns ping by ping; measured on the fresh
   connections before the transfers and again after them.
3. Media gap: the longest time without a decoded frame of the first video track (320x240
   at 30 fps, video only, from the agents; the page's fake camera is 640x480 at 20 fps) at
   each receiver, from 0.5 s before agent ``a`` acts to 2.5 s after (longer if frames have
   not resumed): renegotiation in place (``add_track``, a second 320x240@30 track), the
   connection replaced (``call``), and nothing done (the floor); agent <-> agent and
   agent <-> page, the modes taking turns. The page counts decoded frames with a
   MediaStreamTrackProcessor on the track, the agents with a frame consumer.

Who runs where (2 cores, shared): the signaling server is a subprocess (``python -m
signaling``, limits raised: 512 KiB frames, no practical rate limit, a 4096-message send
queue); agent ``a`` runs in this process; agent ``b`` in a subprocess of its own (this
script with ``--peer``); the page in Debian's headless Chromium, driven by Playwright. The
page's own receive path runs for every message (its chat line, inbox and SHA-256).

    ./dev bench datachannel              # 2-3 minutes
    ./dev bench datachannel --quick      # a smoke run: 2 MiB, 20 pings, 1 gap each
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(0, str(ROOT))

from playwright.async_api import Browser, async_playwright  # noqa: E402

from benchmarks.common import (  # noqa: E402
    cpu_seconds,
    free_port,
    machine_info,
    wait_listening,
    write_result,
)
from peer import events as ev  # noqa: E402
from peer.agent import Agent  # noqa: E402
from peer.datachannel import DataChannel  # noqa: E402
from peer.media.sources import LocalMedia, VideoSettings, open_local_media  # noqa: E402
from peer.media.synthetic import SyntheticVideoTrack  # noqa: E402
from peer.mesh import LinkState  # noqa: E402
from signaling.protocol import PeerId  # noqa: E402
from tests.browser.pages import (  # noqa: E402
    DECODING_JS,
    QUIET_FLAGS,
    RoomPage,
    launch,
    open_room_page,
)
from tests.peer.helpers import FrameTimes, largest_gap  # noqa: E402

log = logging.getLogger("datachannel")
T = TypeVar("T")

RESULTS = ROOT / "benchmarks" / "results"
A, B, WEB = PeerId("a"), PeerId("b"), PeerId("web")
#: Message sizes: the largest one-frame binary message, and a chunked one.
SIZES = {"16383 B (1 frame)": 16383, "256 KiB (17 frames)": 256 * 1024}
PERIOD = 251  # message i is RAMP[i % PERIOD:][:size]
RAMP = bytes(range(PERIOD)) * (max(SIZES.values()) // PERIOD + 2)
AGENT_WINDOW = 32  # messages the agent sender lets wait in its queue
PAGE_WINDOW = 16  # unfinished sendData calls the page sender allows
PING = 100  # bytes of a round-trip message
VIDEO = VideoSettings(320, 240, 30)
BEFORE, AFTER = 0.5, 2.5  # the gap window around an action, seconds
#: The relay server's limits: frames up to 512 KiB (a 256 KiB message is ~350 KB of
#: base64), no practical rate limit, a send queue a burst cannot overflow.
SERVER_LIMITS = [
    "--max-frame-bytes",
    str(512 * 1024),
    "--rate",
    "1000000",
    "--burst",
    "1000000",
    "--byte-rate",
    "1000000000000",
    "--byte-burst",
    "1000000000000",
    "--send-queue",
    "4096",
]
TIMEOUT = 120.0


def expected(index: int, size: int) -> bytes:
    start = index % PERIOD
    return RAMP[start : start + size]


@dataclass
class Intake:
    """What a receiver got of one transfer: times (time.monotonic()), bytes, bad messages."""

    count: int
    size: int
    got: int = 0
    total: int = 0  # bytes
    bad: int = 0
    first: float = 0.0
    last: float = 0.0
    first_size: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, data: bytes) -> None:
        now = time.monotonic()
        if self.got == 0:
            self.first, self.first_size = now, len(data)
        self.last = now
        if data != expected(self.got, self.size):
            self.bad += 1
        self.got += 1
        self.total += len(data)
        if self.got >= self.count:
            self.done.set()

    def report(self) -> dict[str, Any]:
        return {
            "got": self.got,
            "bytes": self.total,
            "bad": self.bad,
            "first": self.first,
            "last": self.last,
            "first_size": self.first_size,
        }


def mb_per_s(report: dict[str, Any]) -> float | None:
    """Bytes after the first message over first-to-last, in MB/s (10^6 bytes)."""
    elapsed = float(report["last"]) - float(report["first"])
    if elapsed <= 0:
        return None
    return float(report["bytes"] - report["first_size"]) / elapsed / 1e6


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` percent at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "max_ms": round(max(values), 2),
    }


# -- agent b: a subprocess of this script ---------------------------------------------------


class Remote:
    """Agent ``b``: echoes pings (data channel and relay), takes transfers when told to, and
    answers for its frames of ``a``'s first video track. Driven by ``a`` through the server."""

    def __init__(self, agent: Agent, times: FrameTimes) -> None:
        self.agent = agent
        self.times = times
        self.intake: Intake | None = None
        self.dropped = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    def reply(self, to: PeerId | None, type_: str, data: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self.agent.send_message(type_, data, to))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_event(self, event: ev.Event) -> None:
        match event:
            case ev.DataReceived(peer=peer, data=str(text)) if text.startswith("ping"):
                self.agent.send_data(text, to=peer)
            case ev.DataReceived(peer=peer, data=bytes(blob)) if self.intake is not None:
                self.take(peer, blob)
            case ev.DataDropped():
                self.dropped += 1
            case ev.RoomMessage(sender=peer, type="bench-ping", data=data):
                self.reply(peer, "bench-pong", data)
            case ev.RoomMessage(sender=peer, type="bench-data", data=data) if (
                self.intake is not None
            ):
                self.take(peer, base64.b64decode(data["b64"]))
            case ev.RoomMessage(sender=peer, type="bench-expect", data=data):
                self.intake = Intake(int(data["count"]), int(data["size"]))
                self.dropped = 0
                self.reply(peer, "bench-ready", {})
            case ev.RoomMessage(sender=peer, type="bench-gap", data=data):
                self.reply(peer, "bench-gap", self.gap(float(data["start"])))

    def take(self, peer: PeerId | None, data: bytes) -> None:
        assert self.intake is not None
        self.intake.take(data)
        if self.intake.done.is_set():
            self.reply(peer, "bench-report", self.intake.report() | {"dropped": self.dropped})
            self.intake = None

    def gap(self, start: float) -> dict[str, Any]:
        now = time.monotonic()
        stamps = self.times.times.get(str(A), [])
        link = self.agent.links.get(A)
        videos = [tap for tap in link.taps if tap.kind == "video"] if link else []
        return {
            "gap": largest_gap(stamps, start, now),
            "age": now - stamps[-1] if stamps else None,
            "videos": len(videos),
        }


async def remote_main(url: str, room: str, video: VideoSettings | None) -> int:
    media = open_local_media("synthetic", "none", label="b", settings=video) if video else None
    times = FrameTimes()
    agent = Agent(
        url,
        room=room,
        peer_id="b",
        media=media,
        consumers=[times],
        stats_interval=None,
        event_queue_size=8,
    )
    remote = Remote(agent, times)
    agent.add_listener(remote.on_event)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await agent.join()
        await stop.wait()
    finally:
        await agent.leave()
        if media is not None:
            media.stop()
    return 0


# -- agent a: this process ------------------------------------------------------------------


class Local:
    """Agent ``a``'s side: its channels, the echoes and replies it waits for, what it takes."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.channels: dict[PeerId, DataChannel] = {}
        self.echoes: dict[PeerId, asyncio.Queue[str]] = {}
        #: (sender, type) -> the application messages received, waiting to be read
        self.replies: dict[tuple[PeerId, str], asyncio.Queue[dict[str, Any]]] = {}
        self.intake: Intake | None = None
        self.dropped: list[ev.DataDropped] = []
        agent.add_listener(self.on_event)

    def on_event(self, event: ev.Event) -> None:
        match event:
            case ev.ChannelOpened(peer=peer, label="meshpeer", channel=channel):
                self.channels[peer] = channel
            case ev.DataReceived(peer=peer, data=str(text)) if text.startswith("ping"):
                self.echoes.setdefault(peer, asyncio.Queue(8)).put_nowait(text)
            case ev.DataReceived(data=bytes(blob)) if self.intake is not None:
                self.intake.take(blob)
            case ev.DataDropped():
                self.dropped.append(event)
            case ev.RoomMessage(sender=str(peer), type=type_, data=data):
                queue = self.replies.setdefault((PeerId(peer), type_), asyncio.Queue(8))
                queue.put_nowait(data)

    async def ask(
        self, type_: str, data: dict[str, Any], answer: str, to: PeerId = B, within: float = 10
    ) -> dict[str, Any]:
        """Send ``to`` a ``type_`` message through the server; its ``answer``."""
        queue = self.replies.setdefault((to, answer), asyncio.Queue(8))
        while not queue.empty():
            queue.get_nowait()
        await self.agent.send_message(type_, data, to)
        return await wait(queue.get(), within, f"{to}'s {answer}")

    async def wait_reply(self, answer: str, within: float) -> dict[str, Any]:
        queue = self.replies.setdefault((B, answer), asyncio.Queue(8))
        return await wait(queue.get(), within, f"b's {answer}")

    async def send_paced(self, peer: PeerId, count: int, size: int) -> int:
        """``count`` messages to ``peer`` on the data channel, at most AGENT_WINDOW queued;
        returns how many were refused (0 unless something is wrong)."""
        channel = self.channels[peer]
        refused = 0
        for index in range(count):
            while channel.queued >= AGENT_WINDOW:  # noqa: ASYNC110 - no "room again" event
                await asyncio.sleep(0.001)
            refused += self.agent.send_data(expected(index, size), to=peer) == 0
        return refused


async def wait(awaitable: Awaitable[T], within: float, what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, within)
    except TimeoutError:
        raise RuntimeError(f"timed out after {within:g} s waiting for {what}") from None


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.02)


#: The page's side of the benchmark: echoes pings from ``peer``, takes transfers (checked
#: once the last message is in, outside the timing) and sends them.
PAGE_JS = """
(peer) => {
  const link = meshpeer.page.links.get(peer);
  const ramp = new Uint8Array(262144 + 2 * 251).map((_, j) => j % 251);
  const bench = { rx: null, result: null };
  window.__bench = bench;
  const signaling = meshpeer.page.signaling;
  signaling.addEventListener("message", ({ detail }) => {
    if (detail?.type !== "bench-ping" || detail.from !== peer) return;
    signaling.send({ type: "bench-pong", from: meshpeer.page.peerId, to: peer, p: detail.p });
  });
  link.addEventListener("message", ({ detail: { data } }) => {
    if (typeof data === "string") {
      if (data.startsWith("ping")) link.sendData(data);
      return;
    }
    const rx = bench.rx;
    if (!rx) return;
    const now = performance.now();
    if (!rx.messages.length) {
      rx.first = now;
      rx.firstSize = data.byteLength;
    }
    rx.last = now;
    rx.bytes += data.byteLength;
    rx.messages.push(data);
    if (rx.messages.length === rx.count) rx.finish();
  });
  bench.expect = (count, size) => {
    bench.result = new Promise((resolve) => {
      bench.rx = { count, size, messages: [], bytes: 0, first: 0, last: 0, firstSize: 0,
        finish: () => {
          const rx = bench.rx;
          bench.rx = null;
          let bad = 0;
          rx.messages.forEach((buffer, i) => {
            const got = new Uint8Array(buffer);
            const want = ramp.subarray(i % 251, (i % 251) + size);
            if (got.length !== size || got.some((v, j) => v !== want[j])) bad += 1;
          });
          const epoch = (t) => (performance.timeOrigin + t) / 1000;
          resolve({ got: rx.messages.length, bytes: rx.bytes, bad, first: epoch(rx.first),
            last: epoch(rx.last), first_size: rx.firstSize });
        } };
    });
  };
  bench.send = async (count, size, window) => {
    const pending = [];
    let refused = 0;
    for (let i = 0; i < count; i++) {
      if (pending.length >= window) refused += (await pending.shift()) ? 0 : 1;
      pending.push(link.sendData(ramp.slice(i % 251, (i % 251) + size)));
    }
    for (const sent of pending) refused += (await sent) ? 0 : 1;
    return refused;
  };
}
"""

#: Epoch ms of every decoded frame of ``peer``'s first video track in the page (read with a
#: MediaStreamTrackProcessor, as the agent's FrameTimes sees decoded frames; the video
#: element's requestVideoFrameCallback only fires at the headless compositor's pace, one
#: gap of 0.1 s in every window). A new connection's track is followed once it is there.
WATCH_JS = """
(peer) => {
  const log = { frames: [] };
  window.__gap = log;
  let watched = null;
  const watch = async (track) => {
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    while (watched === track) {
      const { value, done } = await reader.read();
      if (done) break;
      value.close();
      if (watched === track) log.frames.push(performance.timeOrigin + performance.now());
    }
    reader.releaseLock();
  };
  setInterval(() => {
    const track = meshpeer.page.links.get(peer)?.stream.getVideoTracks()[0];
    if (track && track !== watched && track.readyState === "live") {
      watched = track;
      watch(track);
    }
  }, 10);
}
"""


@dataclass
class Transfer:
    path: str
    size_label: str
    round: int
    count: int
    size: int
    mb_s: float | None
    bytes: int
    bad: int
    dropped: int
    #: Sender start to last message received, in seconds (includes the start-up).
    total_s: float
    cpu_s: dict[str, float]


class DataBench:
    """The data phase: a (here), b (subprocess) and a page (no camera) in one room."""

    def __init__(self, local: Local, remote_pid: int, server_pid: int, web: RoomPage | None):
        self.local = local
        self.remote_pid = remote_pid
        self.server_pid = server_pid
        self.web = web

    def cpu(self) -> dict[str, float]:
        return {
            "a": time.process_time(),
            "b": cpu_seconds(self.remote_pid),
            "server": cpu_seconds(self.server_pid),
        }

    async def transfer(self, path: str, label: str, size: int, count: int, rnd: int) -> Transfer:
        cpu0 = self.cpu()
        local = self.local
        dropped0 = len(local.dropped)
        refused = 0
        if path == "agent → agent":
            await local.ask("bench-expect", {"count": count, "size": size}, "bench-ready")
            start = time.monotonic()
            refused = await local.send_paced(B, count, size)
            report = await local.wait_reply("bench-report", TIMEOUT)
        elif path == "agent → agent via server":
            await local.ask("bench-expect", {"count": count, "size": size}, "bench-ready")
            start = time.monotonic()
            for index in range(count):
                payload = base64.b64encode(expected(index, size)).decode()
                if not await local.agent.send_message("bench-data", {"b64": payload}, B):
                    refused += 1
            report = await local.wait_reply("bench-report", TIMEOUT)
        elif path == "agent → page":
            assert self.web is not None
            page = self.web.page
            await page.evaluate("([c, s]) => window.__bench.expect(c, s)", [count, size])
            result = asyncio.ensure_future(page.evaluate("() => window.__bench.result"))
            start_wall = time.time()
            refused = await local.send_paced(WEB, count, size)
            report = await wait(result, TIMEOUT, "the page's transfer")
            total = report["last"] - start_wall  # the page's times are epoch seconds
        else:  # page → agent
            assert self.web is not None
            local.intake = Intake(count, size)
            start = time.monotonic()
            refused = await wait(
                self.web.page.evaluate(
                    "([c, s, w]) => window.__bench.send(c, s, w)", [count, size, PAGE_WINDOW]
                ),
                TIMEOUT,
                "the page's sending",
            )
            await wait(local.intake.done.wait(), TIMEOUT, "the page's messages")
            report = local.intake.report() | {"dropped": 0}
            local.intake = None
        cpu1 = self.cpu()
        if path != "agent → page":
            total = report["last"] - start
        dropped = refused + report.get("dropped", 0) + len(local.dropped) - dropped0
        return Transfer(
            path,
            label,
            rnd,
            count,
            size,
            mb_per_s(report),
            report["bytes"],
            report["bad"],
            dropped,
            round(total, 3),
            {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0},
        )


async def throughput(bench: DataBench, volume: int, rounds: int) -> list[Transfer]:
    paths = ["agent → agent", "agent → agent via server"]
    if bench.web is not None:
        paths += ["agent → page", "page → agent"]
    transfers: list[Transfer] = []
    for rnd in range(rounds):
        for label, size in SIZES.items():
            turn = paths[rnd % len(paths) :] + paths[: rnd % len(paths)]
            for path in turn:
                done = await bench.transfer(path, label, size, volume // size, rnd)
                log.info("%s", done)
                print(
                    f"  round {rnd + 1} {path:26} {label:20} "
                    f"{done.mb_s or 0:7.2f} MB/s  bad {done.bad}  dropped {done.dropped}",
                    file=sys.stderr,
                    flush=True,
                )
                transfers.append(done)
    return transfers


async def round_trips(bench: DataBench, count: int) -> dict[str, list[float]]:
    """``count`` pings per path, the paths taking turns ping by ping; milliseconds."""
    local = bench.local
    pad = "x" * PING

    async def channel(peer: PeerId, seq: int) -> float:
        text = f"ping {seq:06d} {pad}"[:PING]
        queue = local.echoes.setdefault(peer, asyncio.Queue(8))
        began = time.perf_counter()
        local.agent.send_data(text, to=peer)
        echo = await wait(queue.get(), 10, f"the echo of ping {seq} from {peer}")
        if echo != text:
            raise RuntimeError(f"{peer} echoed {echo[:20]!r} for {text[:20]!r}")
        return (time.perf_counter() - began) * 1000

    async def relay(peer: PeerId, seq: int) -> float:
        text = f"ping {seq:06d} {pad}"[:PING]
        began = time.perf_counter()
        echo = await local.ask("bench-ping", {"p": text}, "bench-pong", to=peer)
        if echo.get("p") != text:
            raise RuntimeError(f"{peer} relayed back {echo!r} for {text[:20]!r}")
        return (time.perf_counter() - began) * 1000

    paths: dict[str, Callable[[int], Awaitable[float]]] = {
        "agent ↔ agent": lambda seq: channel(B, seq),
        "agent ↔ agent via server": lambda seq: relay(B, seq),
    }
    if bench.web is not None:
        paths["agent ↔ page"] = lambda seq: channel(WEB, seq)
        paths["agent ↔ page via server"] = lambda seq: relay(WEB, seq)
    names = list(paths)
    for seq in range(10):  # warm-up, not counted
        for name in names:
            await paths[name](seq)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for seq in range(count):
        shift = seq % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await paths[name](seq))
    return samples


# -- media gap ------------------------------------------------------------------------------

MODES = ("nothing", "in place (add_track)", "replaced (call)")


@dataclass
class Gap:
    pair: str
    mode: str
    repeat: int
    #: receiver -> largest gap of the first video track, seconds
    gaps: dict[str, float]
    same_connection: bool
    videos_at_receiver: int | None = None


class GapPair:
    """``a`` (here) and one other party, video both ways; ``a`` acts, both ends measure."""

    def __init__(
        self,
        agent: Agent,
        times: FrameTimes,
        other: PeerId,
        local: Local | None,
        web: RoomPage | None,
    ) -> None:
        self.agent = agent
        self.times = times
        self.other = other
        self.local = local
        self.web = web
        self.extras: list[SyntheticVideoTrack] = []

    async def other_gap(self, start: float, start_wall: float) -> tuple[float, float, int | None]:
        """(largest gap since ``start``, age of the last frame, video tracks received)."""
        if self.local is not None:
            reply = await self.local.ask("bench-gap", {"start": start}, "bench-gap")
            age = reply["age"] if reply["age"] is not None else math.inf
            return float(reply["gap"]), float(age), int(reply["videos"])
        assert self.web is not None
        frames: list[float] = await self.web.page.evaluate(
            "(t0) => window.__gap.frames.filter((t) => t >= t0)", start_wall * 1000
        )
        now = time.time()
        stamps = [t / 1000 for t in frames]
        age = now - stamps[-1] if stamps else math.inf
        videos: int = await self.web.page.evaluate(DECODING_JS, str(A))
        return largest_gap(stamps, start_wall, now), age, videos

    def flowing(self) -> bool:
        link = self.agent.links.get(self.other)
        stamps = self.times.times.get(str(self.other), [])
        return (
            link is not None
            and link.state is LinkState.CONNECTED
            and not link.offer_out
            and bool(stamps)
            and time.monotonic() - stamps[-1] < 0.2
        )

    async def once(self, mode: str, repeat: int, pair: str) -> Gap:
        await until(self.flowing, 20, f"video from {self.other} before {mode}")
        await asyncio.sleep(BEFORE)
        link = self.agent.links[self.other]
        pc = link.pc
        acted = time.monotonic()
        start, start_wall = acted - BEFORE, time.time() - BEFORE
        if mode.startswith("in place"):
            extra = SyntheticVideoTrack(
                "extra", width=VIDEO.width, height=VIDEO.height, fps=VIDEO.fps
            )
            self.extras.append(extra)
            if not await self.agent.add_track(self.other, extra):
                raise RuntimeError(f"add_track to {self.other} refused")
        elif mode.startswith("replaced"):
            await self.agent.call(self.other)
        await asyncio.sleep(max(0.0, acted + AFTER - time.monotonic()))
        deadline = time.monotonic() + 10
        while True:  # until frames flow again both ways: a stall counts up to then
            gap_there, age, videos = await self.other_gap(start, start_wall)
            if (self.flowing() and age < 0.2) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        gap_here = largest_gap(self.times.times.get(str(self.other), []), start, time.monotonic())
        now_link = self.agent.links.get(self.other)
        same = now_link is link and now_link.pc is pc
        return Gap(
            pair,
            mode,
            repeat,
            {
                f"at {self.other} (a's video)": round(gap_there, 3),
                f"at a ({self.other}'s video)": round(gap_here, 3),
            },
            same,
            videos,
        )

    async def run(self, repeats: int, pair: str) -> list[Gap]:
        gaps: list[Gap] = []
        try:
            for repeat in range(repeats):
                turn = MODES[repeat % 3 :] + MODES[: repeat % 3]
                for mode in turn:
                    gap = await self.once(mode, repeat, pair)
                    print(
                        f"  {pair} {mode:22} {gap.gaps}  same connection: {gap.same_connection}",
                        file=sys.stderr,
                        flush=True,
                    )
                    gaps.append(gap)
        finally:
            for extra in self.extras:
                extra.stop()
        return gaps


# -- the run ---------------------------------------------------------------------------------


def start_server(port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "signaling",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        *SERVER_LIMITS,
    ]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)


async def start_remote(
    url: str, room: str, video: VideoSettings | None
) -> asyncio.subprocess.Process:
    command = [sys.executable, str(SCRIPT), "--peer", url, "--room", room]
    if video is not None:
        command += ["--video", f"{video.width}x{video.height}@{video.fps}"]
    return await asyncio.create_subprocess_exec(*command, cwd=ROOT)


async def stop_remote(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def open_page(browser: Browser, http_url: str, room: str) -> RoomPage:
    context = await browser.new_context()
    web = await open_room_page(context, http_url, peer_id=str(WEB), room=room)
    await web.wait_joined()
    return web


async def data_phase(
    url: str, http_url: str, server_pid: int, browser: Browser | None, args: argparse.Namespace
) -> dict[str, Any]:
    agent = Agent(url, room="data", peer_id=str(A), stats_interval=None, event_queue_size=8)
    local = Local(agent)
    remote = None
    web = None
    try:
        await agent.join()
        remote = await start_remote(url, "data", None)
        await until(lambda: B in local.channels and local.channels[B].is_open, 30, "b's channel")
        if browser is not None:
            web = await open_page(browser, http_url, "data")
            await until(
                lambda: WEB in local.channels and local.channels[WEB].is_open,
                30,
                "the page's channel",
            )
            await web.page.evaluate(PAGE_JS, str(A))
        bench = DataBench(local, remote.pid, server_pid, web)
        print(f"round trips ({args.pings} each):", file=sys.stderr, flush=True)
        pings = {"before": await round_trips(bench, args.pings)}
        print(
            f"throughput ({args.volume_mib} MiB a transfer, {args.rounds} rounds):", file=sys.stderr
        )
        transfers = await throughput(bench, args.volume_mib * 1024 * 1024, args.rounds)
        print(f"round trips again ({args.pings} each):", file=sys.stderr, flush=True)
        pings["after"] = await round_trips(bench, args.pings)
        page_dropped = (await web.snapshot())["data"]["dropped"] if web is not None else 0
    finally:
        if web is not None:
            await web.page.context.close()
        await agent.leave()
        if remote is not None:
            await stop_remote(remote)
    return {"transfers": transfers, "pings": pings, "page_dropped": page_dropped}


async def gap_phase(
    url: str, http_url: str, browser: Browser | None, args: argparse.Namespace
) -> list[Gap]:
    gaps: list[Gap] = []
    pairs = [("agent ↔ agent", B)] + ([("agent ↔ page", WEB)] if browser is not None else [])
    for pair, other in pairs:
        room = f"gap-{other}"
        times = FrameTimes()
        media: LocalMedia = open_local_media("synthetic", "none", label="a", settings=VIDEO)
        agent = Agent(
            url,
            room=room,
            peer_id=str(A),
            media=media,
            consumers=[times],
            stats_interval=None,
            event_queue_size=8,
        )
        remote = None
        web = None
        try:
            await agent.join()
            local = None
            if other == B:
                local = Local(agent)
                remote = await start_remote(url, room, VIDEO)
            else:
                assert browser is not None
                web = await open_page(browser, http_url, room)
                await web.page.evaluate(WATCH_JS, str(A))
            gap_pair = GapPair(agent, times, other, local, web)
            await until(gap_pair.flowing, 30, f"video from {other}")
            await asyncio.sleep(1.0)
            gaps += await gap_pair.run(args.gap_repeats, pair)
        finally:
            if web is not None:
                await web.page.context.close()
            await agent.leave()
            media.stop()
            if remote is not None:
                await stop_remote(remote)
    return gaps


#: The processes of each path whose CPU time is measured (the page's is not).
PARTIES = {
    "agent → agent": ("a", "b"),
    "agent → agent via server": ("a", "b", "server"),
    "agent → page": ("a",),
    "page → agent": ("a",),
}


def throughput_rows(transfers: list[Transfer]) -> list[dict[str, Any]]:
    rows = []
    for path in dict.fromkeys(t.path for t in transfers):
        for label in SIZES:
            mine = [t for t in transfers if t.path == path and t.size_label == label]
            rates = [t.mb_s for t in mine if t.mb_s is not None]
            if not mine:
                continue
            rows.append(
                {
                    "path": path,
                    "messages": label,
                    "n": len(mine),
                    "mb_s_median": round(statistics.median(rates), 2) if rates else None,
                    "mb_s_min": round(min(rates), 2) if rates else None,
                    "mb_s_max": round(max(rates), 2) if rates else None,
                    "bytes_each": mine[0].count * mine[0].size,
                    "bad_messages": sum(t.bad for t in mine),
                    "dropped": sum(t.dropped for t in mine),
                    "cpu_s_median": {
                        party: round(statistics.median(t.cpu_s[party] for t in mine), 2)
                        for party in PARTIES[path]
                    },
                }
            )
    return rows


def gap_rows(gaps: list[Gap]) -> list[dict[str, Any]]:
    rows = []
    for pair in dict.fromkeys(g.pair for g in gaps):
        for mode in MODES:
            mine = [g for g in gaps if g.pair == pair and g.mode == mode]
            if not mine:
                continue
            for receiver in mine[0].gaps:
                values = [g.gaps[receiver] for g in mine]
                rows.append(
                    {
                        "pair": pair,
                        "mode": mode,
                        "receiver": receiver,
                        "n": len(values),
                        "median_s": round(statistics.median(values), 3),
                        "max_s": max(values),
                        "same_connection": sum(g.same_connection for g in mine),
                    }
                )
    return rows


def print_tables(result: dict[str, Any]) -> None:
    print(
        "\nThroughput (MB/s = 10^6 bytes/s at the receiver; median, min-max over rounds; CPU "
        "seconds of a transfer, median, per process):\n"
    )
    print("| path | messages | MB/s | min-max | CPU s | bytes checked, bad | dropped |")
    print("|---|---|---|---|---|---|---|")
    for r in result["throughput"]:
        cpu = ", ".join(f"{party} {value}" for party, value in r["cpu_s_median"].items())
        print(
            f"| {r['path']} | {r['messages']} | **{r['mb_s_median']}** | "
            f"{r['mb_s_min']}-{r['mb_s_max']} | {cpu} | {r['n']} x {r['bytes_each']:,}, "
            f"{r['bad_messages']} bad | {r['dropped']} |"
        )
    print(
        f"\nRound trip, {PING}-byte text messages one at a time, before the transfers and "
        "after them:\n"
    )
    print("| path | p50 ms | p99 ms | max ms | after: p50 ms | p99 ms | max ms | n |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["round_trip"]:
        before, after = r["before"], r["after"]
        print(
            f"| {r['path']} | **{before['p50_ms']}** | {before['p99_ms']} | {before['max_ms']} "
            f"| **{after['p50_ms']}** | {after['p99_ms']} | {after['max_ms']} | {r['n']} |"
        )
    print(
        f"\nMedia gap, first video track ({VIDEO.width}x{VIDEO.height}@{VIDEO.fps} from the "
        f"agents; the page's camera 640x480@20), {BEFORE} s before to {AFTER}+ s after:\n"
    )
    print("| pair | what a does | receiver | median s | max s | n | same connection |")
    print("|---|---|---|---|---|---|---|")
    for r in result["media_gap"]:
        print(
            f"| {r['pair']} | {r['mode']} | {r['receiver']} | **{r['median_s']}** | "
            f"{r['max_s']} | {r['n']} | {r['same_connection']}/{r['n']} |"
        )
    machine = result["machine"]
    during = result["load_during"]
    before, after = (
        round(load[0], 2) for load in (machine["loadavg_before"], machine["loadavg_after"])
    )
    print(
        f"\n{machine['cores']} cores; 1-minute load average {before} before, {after} after, "
        f"{min(during)}-{max(during)} during (every 5 s); {machine['seconds']} s"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started, load_before = time.monotonic(), os.getloadavg()
    port = free_port()
    server = start_server(port)
    url, http_url = f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}"
    load: list[float] = []

    async def sample_load() -> None:
        while True:
            load.append(os.getloadavg()[0])
            await asyncio.sleep(5)

    sampler = asyncio.get_running_loop().create_task(sample_load())
    try:
        wait_listening(server, port, 20)
        async with async_playwright() as pw:
            viewer = camera = None
            if args.page:
                # no camera; plain host candidates (not mDNS names aioice cannot resolve)
                viewer = await pw.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    headless=True,
                    args=[*QUIET_FLAGS, "--disable-features=WebRtcHideLocalIpsWithMdns"],
                )
                camera = await launch(pw)
            try:
                data = await data_phase(url, http_url, server.pid, viewer, args)
                print("media gap:", file=sys.stderr, flush=True)
                gaps = await gap_phase(url, http_url, camera, args)
            finally:
                for browser in (viewer, camera):
                    if browser is not None:
                        await browser.close()
    finally:
        sampler.cancel()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    pings = data["pings"]
    return {
        "benchmark": "datachannel",
        "machine": machine_info(load_before, started),
        #: the 1-minute load average every 5 s of the run
        "load_during": [round(value, 2) for value in load],
        "settings": {
            "volume_mib": args.volume_mib,
            "rounds": args.rounds,
            "pings": args.pings,
            "gap_repeats": args.gap_repeats,
            "sizes": SIZES,
            "agent_window": AGENT_WINDOW,
            "page_window": PAGE_WINDOW,
            "ping_bytes": PING,
            "server_limits": SERVER_LIMITS,
            "video": asdict(VIDEO),
            "gap_window_s": [BEFORE, AFTER],
            "parties": {
                "server": "subprocess (python -m signaling)",
                "a": "this process",
                "b": "subprocess (this script --peer)",
                "page": "headless Chromium",
            },
        },
        "throughput": throughput_rows(data["transfers"]),
        "round_trip": [
            {"path": name, "n": len(pings["before"][name])}
            | {when: summary(pings[when][name]) for when in ("before", "after")}
            for name in pings["before"]
        ],
        "media_gap": gap_rows(gaps),
        "page_dropped": data["page_dropped"],
        "transfers": [asdict(t) for t in data["transfers"]],
        "round_trip_samples_ms": {
            when: {name: [round(v, 3) for v in values] for name, values in paths.items()}
            for when, paths in pings.items()
        },
        "gaps": [asdict(g) for g in gaps],
    }


def parse_video(text: str) -> VideoSettings:
    size, _, fps = text.partition("@")
    width, _, height = size.partition("x")
    return VideoSettings(int(width), int(height), int(fps or 30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 1 minute)")
    parser.add_argument("--volume-mib", type=int, default=16, help="MiB per transfer")
    parser.add_argument("--rounds", type=int, default=5, help="transfers of each kind")
    parser.add_argument("--pings", type=int, default=200, help="round trips per path")
    parser.add_argument("--gap-repeats", type=int, default=5, help="gaps of each mode")
    parser.add_argument("--no-page", dest="page", action="store_false", help="agents only")
    parser.add_argument("--output", type=Path, default=RESULTS / "datachannel.json")
    parser.add_argument("--peer", metavar="URL", help=argparse.SUPPRESS)  # agent b
    parser.add_argument("--room", help=argparse.SUPPRESS)
    parser.add_argument("--video", type=parse_video, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.peer:
        return asyncio.run(remote_main(args.peer, args.room, args.video))
    if args.quick:
        args.volume_mib, args.rounds, args.pings, args.gap_repeats = 2, 1, 20, 1
    result = asyncio.run(run(args))
    print_tables(result)
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
