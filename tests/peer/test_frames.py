"""Agent.video_frames / audio_frames between real agents on loopback (issue 18, items 2-3).

The figures are the issue's: a fast reader keeps up with what the tap decodes (compared in
the same window, so a busy machine slows both alike); a reader whose every frame costs a
200 ms job in a thread gets fresh frames while the loop stays responsive and memory flat;
10 s of 16 kHz mono are 160,000 samples and keep a 1 kHz tone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import numpy.typing as npt
import pytest

from peer.agent import Agent
from peer.media.readers import ReceivedAudio
from peer.media.sources import LocalMedia
from peer.media.synthetic import SyntheticVideoTrack, ToneAudioTrack
from signaling.protocol import PeerId
from tests.peer.helpers import SMALL, FrameTimes, agents, frames_from, full_mesh_flowing
from tests.support import LoopLag, RunningServer, ThreadLag, eventually, seconds

log = logging.getLogger(__name__)


@asynccontextmanager
async def sender_and_bot(
    url: str, *, video: bool = True, tone_hz: int | None = None, times: FrameTimes | None = None
) -> AsyncIterator[tuple[Agent, Agent]]:
    """``alice`` sending 640x480@30 (and a tone of ``tone_hz``), ``bot`` sending nothing,
    both joined and alice's media flowing to the bot."""
    media = LocalMedia(
        SyntheticVideoTrack("alice", width=640, height=480, fps=30) if video else None,
        ToneAudioTrack("alice", frequency=tone_hz) if tone_hz is not None else None,
    )
    alice = Agent(url, room="frames", peer_id="alice", media=media, stats_interval=None)
    consumers = [times] if times is not None else []
    bot = Agent(url, room="frames", peer_id="bot", stats_interval=None, consumers=consumers)
    try:
        await alice.join()
        await bot.join()
        kind = "video" if video else "audio"
        await eventually(
            lambda: frames_from(bot, "alice", kind) >= 10, seconds(20), f"alice's {kind} at bot"
        )
        yield alice, bot
    finally:
        await asyncio.gather(alice.leave(), bot.leave())
        media.stop()


def rss_bytes() -> int:
    pages = int(open("/proc/self/statm").read().split()[1])  # noqa: SIM115 (one read)
    return pages * os.sysconf("SC_PAGE_SIZE")


async def test_a_fast_reader_gets_the_frames_the_tap_decodes(server: RunningServer) -> None:
    times = FrameTimes()
    async with sender_and_bot(server.ws_url, times=times) as (_, bot):
        got: list[tuple[tuple[int, ...], np.dtype[np.generic], float, str]] = []

        async def read() -> None:
            async for frame in bot.video_frames("alice"):  # arrays not kept: 0.9 MB each
                got.append((frame.array.shape, frame.array.dtype, frame.timestamp, frame.peer))

        reader = asyncio.create_task(read())
        try:
            await eventually(lambda: len(got) >= 15, seconds(10), "the reader's first frames")
            start, wall = len(got), time.monotonic()
            await asyncio.sleep(4.0)  # the measured window
            read_n, end = len(got) - start, time.monotonic()
        finally:
            reader.cancel()
    arrivals = [t for t in times.times["alice"] if wall <= t <= end]
    # Frames the tap handed over less than 5 ms before the next one (a burst, when a busy
    # machine held the decoder back) are the newest for too short a time for any reader
    # of the newest frame: they are not in the anchor. On a quiet machine there are none.
    bursts = sum(b - a < 0.005 for a, b in itertools.pairwise(arrivals))
    anchor = len(arrivals) - bursts
    log.info(
        "reader %d frames (%.1f fps), tap %d (%.1f fps), %d of them in bursts",
        read_n, read_n / (end - wall), len(arrivals), len(arrivals) / (end - wall), bursts,
    )  # fmt: skip
    assert all(shape == (480, 640, 3) and dtype == np.uint8 for shape, dtype, _, _ in got)
    assert anchor > 0 and read_n >= anchor * 29 / 30, (read_n, len(arrivals), bursts)
    stamps = [stamp for _, _, stamp, _ in got]
    assert stamps == sorted(stamps) and all(peer == "alice" for *_, peer in got)


def busy_job(array: npt.NDArray[np.uint8]) -> float:
    """200 ms of a user's own work on a frame, in a thread (as a model would run)."""
    time.sleep(0.2)
    return float(array.mean())


@pytest.mark.timeout(240)  # a 60 s window, as the issue asks, plus set-up on a busy machine
async def test_a_slow_reader_gets_fresh_frames_and_leaves_the_loop_alone(
    server: RunningServer,
) -> None:
    times = FrameTimes()  # when the tap handed each of alice's frames over
    async with sender_and_bot(server.ws_url, times=times) as (_, bot):
        await asyncio.sleep(2.0)  # past the connection's start (keyframes, bitrate ramp)
        async with LoopLag() as baseline:  # the same machine, no reader yet
            await asyncio.sleep(3.0)
        got: list[tuple[float, float, float, int]] = []  # (arrived, asked, got, skipped)

        async def read() -> None:
            asked = time.monotonic()
            async for frame in bot.video_frames("alice"):
                got.append((frame.arrived, asked, time.monotonic(), frame.skipped))
                await asyncio.to_thread(busy_job, frame.array)
                asked = time.monotonic()

        reader = asyncio.create_task(read())
        try:
            await asyncio.sleep(5.0)  # warm-up: allocator and aiortc buffers settle
            got.clear()
            before = rss_bytes()
            with ThreadLag() as machine:
                async with LoopLag() as lag:
                    await asyncio.sleep(60.0)
            growth = rss_bytes() - before
        finally:
            reader.cancel()
    arrivals = times.times["alice"]
    ages = [at - arrived for arrived, _, at, _ in got]
    # A frame older than 250 ms is the reader's fault only if a newer one had arrived by the
    # time it asked (a backlog); if the stream itself paused (a busy machine), it was the
    # newest there was. Those are counted apart.
    backlog = [
        (age, arrived, asked)
        for (arrived, asked, _, _), age in zip(got, ages, strict=True)
        if age > 0.250 and any(arrived < t <= asked for t in arrivals)
    ]
    stalled = sum(age > 0.250 for age in ages) - len(backlog)
    base, p99, shared = baseline.percentile(0.99), lag.percentile(0.99), machine.percentile(0.99)
    # 20 ms as the issue asks, unless the machine itself lags more: the loop before the
    # reader started (``base``), or a plain thread's sleep in the same 60 s (``shared``: other
    # processes and the GIL, which the loop waits for like everyone). Then the loop may lag
    # no more than 10 ms beyond that.
    limit = max(0.020, base + 0.010, shared + 0.010)
    log.info(
        "%d frames, age median %.0f ms, max %.0f ms (%d older than 250 ms: the stream paused), "
        "skipped mean %.1f; lag p99 %.1f ms (before the reader %.1f ms, a thread's %.1f ms); "
        "RSS growth %.2f MB",
        len(ages), 1000 * float(np.median(ages)), 1000 * max(ages), stalled,
        np.mean([skipped for *_, skipped in got]), 1000 * p99, 1000 * base, 1000 * shared,
        growth / 1e6,
    )  # fmt: skip
    # ~4.5 frames a second at 200 ms each on a quiet machine; a busy one stretches the job
    # itself (thread wake-ups), so only enough frames to judge the ages are required.
    assert len(ages) >= 60 * 2, len(ages)
    assert not backlog, backlog[:5]
    assert p99 <= limit, (p99, base, shared)
    assert growth < 5_000_000, growth


async def test_audio_at_16_khz_is_continuous_and_keeps_the_tone(server: RunningServer) -> None:
    async with sender_and_bot(server.ws_url, video=False, tone_hz=1000) as (_, bot):
        blocks: list[ReceivedAudio] = []
        window: list[float] = []

        async def read() -> None:
            async for block in bot.audio_frames("alice", sample_rate=16000, channels=1):
                if window and time.monotonic() < window[0]:
                    blocks.append(block)

        reader = asyncio.create_task(read())
        try:
            await asyncio.sleep(1.0)  # the reader has started and the stream settled
            tap_start = frames_from(bot, "alice", "audio")
            window.append(time.monotonic() + 10.0)
            await asyncio.sleep(10.0)
            decoded = frames_from(bot, "alice", "audio") - tap_start
        finally:
            reader.cancel()
    samples = np.concatenate([b.array[:, 0] for b in blocks]).astype(np.float64)
    peak = float(np.argmax(np.abs(np.fft.rfft(samples)))) * 16000 / len(samples)
    # The anchor: what the tap decoded in the same window (20 ms Opus frames), so a machine
    # too busy to carry 10 s of audio in 10 s slows both alike; 160,000 on a quiet one.
    expected = decoded * 320
    log.info(
        "%d samples in 10 s (the tap decoded %d frames: %d samples at 16 kHz), %d blocks, "
        "peak %.2f Hz", len(samples), decoded, expected, len(blocks), peak,
    )  # fmt: skip
    assert all(b.array.shape == (320, 1) and b.array.dtype == np.int16 for b in blocks)
    assert expected * 0.99 <= len(samples) <= expected * 1.01, (len(samples), expected)
    stamps = [b.timestamp for b in blocks]
    assert stamps == sorted(stamps)
    assert peak == pytest.approx(1000, abs=5)
    assert sum(b.dropped for b in blocks) == 0


async def test_readers_end_with_their_peer_or_the_agent_and_slow_audio_drops(
    server: RunningServer,
) -> None:
    async with sender_and_bot(server.ws_url, tone_hz=440) as (alice, bot):
        slow: list[ReceivedAudio] = []
        alice_video: list[tuple[int, ...]] = []  # shapes: the arrays are not kept
        everyone: list[tuple[int, ...]] = []

        async def read_slowly() -> None:
            async for block in bot.audio_frames("alice"):
                slow.append(block)
                if len(slow) == 1:  # stop reading while 6.5 s of audio arrive: 1.5 s too many
                    start = frames_from(bot, "alice", "audio")
                    await eventually(
                        lambda: frames_from(bot, "alice", "audio") - start >= 325,  # noqa: B023
                        seconds(30),
                        "6.5 s of audio at the tap",
                    )

        async def collect(into: list[tuple[int, ...]], peer: str | None) -> None:
            async for frame in bot.video_frames(peer, format="gray"):
                into.append(frame.array.shape)

        tasks = [
            asyncio.create_task(read_slowly()),
            asyncio.create_task(collect(alice_video, "alice")),
            asyncio.create_task(collect(everyone, None)),
        ]
        await eventually(lambda: len(slow) > 300, seconds(20), "the slow reader catching up")
        assert alice_video and everyone and everyone[0] == (480, 640)
        await alice.leave()
        await asyncio.wait_for(asyncio.gather(*tasks[:2]), seconds(10))  # alice's readers end
        assert not tasks[2].done()  # the reader of everyone goes on until the bot leaves
        await bot.leave()
        await asyncio.wait_for(tasks[2], seconds(10))
    first, after = slow[0], slow[1]
    log.info(f"slow reader: {after.dropped} blocks dropped, {len(slow)} read")
    # 6.5 s behind with 5 s kept: ~75 blocks of 20 ms lost, the oldest, and said so.
    assert 25 <= after.dropped <= 125, after.dropped
    # The timestamps show the hole: at least the dropped blocks' 20 ms each (more when the
    # sender's clock jumped meanwhile: packets a busy machine lost, 0.9 s once under load 11).
    jump = after.timestamp - first.timestamp
    assert jump >= (after.dropped + 1) * 0.02 - 0.005, jump
    assert all(b.dropped == 0 for b in slow[2:])


async def test_a_peers_second_video_track_is_read_too(server: RunningServer) -> None:
    """A screen share added in place: ``video_frames`` yields arrays of both tracks, each
    with the ``RemoteTrack`` (``index`` 0 and 1) and its own timestamps."""
    async with agents(server.ws_url, ["alice", "bob"]) as (alice, bob):
        await eventually(lambda: full_mesh_flowing([alice, bob], 5), seconds(15), "video flowing")
        seen: dict[int, list[float]] = {}

        async def read() -> None:
            async for frame in alice.video_frames("bob", format="rgb24"):
                assert frame.array.shape == (SMALL.height, SMALL.width, 3)
                seen.setdefault(frame.track.index, []).append(frame.timestamp)

        reader = asyncio.create_task(read())
        screen = SyntheticVideoTrack("screen", width=SMALL.width, height=SMALL.height, fps=15)
        try:
            assert await bob.add_track(PeerId("alice"), screen)
            await eventually(
                lambda: all(len(seen.get(i, ())) >= 10 for i in (0, 1)),
                seconds(10),
                "arrays of both of bob's video tracks",
            )
        finally:
            screen.stop()
            reader.cancel()
        assert all(stamps == sorted(stamps) for stamps in seen.values())
