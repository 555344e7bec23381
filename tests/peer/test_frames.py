"""Agent.video_frames / audio_frames between real agents on loopback (issue 18, items 2-3).

The figures are the issue's: a fast reader keeps up with what the tap decodes (compared in
the same window, so a busy machine slows both alike); a reader whose every frame costs a
200 ms job in a thread gets fresh frames while the loop stays responsive and memory flat;
10 s of 16 kHz mono are 160,000 samples and keep a 1 kHz tone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import numpy.typing as npt
import pytest

from peer.agent import Agent
from peer.media.readers import ReceivedAudio, ReceivedVideo
from peer.media.sources import LocalMedia
from peer.media.synthetic import SyntheticVideoTrack, ToneAudioTrack
from tests.peer.helpers import frames_from
from tests.support import LoopLag, RunningServer, eventually, seconds

log = logging.getLogger(__name__)


@asynccontextmanager
async def sender_and_bot(
    url: str, *, video: bool = True, tone_hz: int | None = None
) -> AsyncIterator[tuple[Agent, Agent]]:
    """``alice`` sending 640x480@30 (and a tone of ``tone_hz``), ``bot`` sending nothing,
    both joined and alice's media flowing to the bot."""
    media = LocalMedia(
        SyntheticVideoTrack("alice", width=640, height=480, fps=30) if video else None,
        ToneAudioTrack("alice", frequency=tone_hz) if tone_hz is not None else None,
    )
    alice = Agent(url, room="frames", peer_id="alice", media=media, stats_interval=None)
    bot = Agent(url, room="frames", peer_id="bot", stats_interval=None)
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
    async with sender_and_bot(server.ws_url) as (_, bot):
        got: list[ReceivedVideo] = []

        async def read() -> None:
            async for frame in bot.video_frames("alice"):
                got.append(frame)

        reader = asyncio.create_task(read())
        try:
            await eventually(lambda: len(got) >= 15, seconds(10), "the reader's first frames")
            start, tap_start, wall = len(got), frames_from(bot, "alice"), time.monotonic()
            await asyncio.sleep(4.0)  # the measured window
            read_n, decoded = len(got) - start, frames_from(bot, "alice") - tap_start
            elapsed = time.monotonic() - wall
        finally:
            reader.cancel()
        log.info(
            "reader %d frames (%.1f fps), tap %d (%.1f fps)",
            read_n, read_n / elapsed, decoded, decoded / elapsed,
        )  # fmt: skip
        assert all(f.array.shape == (480, 640, 3) and f.array.dtype == np.uint8 for f in got)
        assert decoded > 0 and read_n >= decoded * 29 / 30, (read_n, decoded)
        stamps = [f.timestamp for f in got]
        assert stamps == sorted(stamps) and all(f.peer == "alice" for f in got)


def busy_job(array: npt.NDArray[np.uint8]) -> float:
    """200 ms of a user's own work on a frame, in a thread (as a model would run)."""
    time.sleep(0.2)
    return float(array.mean())


async def test_a_slow_reader_gets_fresh_frames_and_leaves_the_loop_alone(
    server: RunningServer,
) -> None:
    async with sender_and_bot(server.ws_url) as (_, bot):
        async with LoopLag() as baseline:  # the same machine, no reader yet
            await asyncio.sleep(3.0)
        ages: list[float] = []
        skipped: list[int] = []

        async def read() -> None:
            async for frame in bot.video_frames("alice"):
                ages.append(time.monotonic() - frame.arrived)
                skipped.append(frame.skipped)
                await asyncio.to_thread(busy_job, frame.array)

        reader = asyncio.create_task(read())
        try:
            await asyncio.sleep(5.0)  # warm-up: allocator and aiortc buffers settle
            ages.clear()
            before = rss_bytes()
            async with LoopLag() as lag:
                await asyncio.sleep(60.0)
            growth = rss_bytes() - before
        finally:
            reader.cancel()
    base, p99 = baseline.percentile(0.99), lag.percentile(0.99)
    # 20 ms as the issue asks, unless the machine alone (no reader) already lags more: then
    # the reader may add no more than 10 ms to what the same run measured without it.
    limit = max(0.020, base + 0.010)
    log.info(
        f"{len(ages)} frames, age max {max(ages) * 1000:.0f} ms, skipped mean "
        f"{np.mean(skipped):.1f}; lag p99 {p99 * 1000:.1f} ms (baseline {base * 1000:.1f} ms); "
        f"RSS growth {growth / 1e6:.2f} MB"
    )
    assert len(ages) >= 60 * 4, len(ages)  # ~4.5 frames a second at 200 ms each
    assert max(ages) <= 0.250, sorted(ages)[-5:]
    assert p99 <= limit, (p99, base)
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
            window.append(time.monotonic() + 10.0)
            await asyncio.sleep(10.0)
        finally:
            reader.cancel()
    samples = np.concatenate([b.array[:, 0] for b in blocks]).astype(np.float64)
    peak = float(np.argmax(np.abs(np.fft.rfft(samples)))) * 16000 / len(samples)
    log.info(f"{len(samples)} samples in 10 s, {len(blocks)} blocks, peak {peak:.2f} Hz")
    assert all(b.array.shape == (320, 1) and b.array.dtype == np.int16 for b in blocks)
    assert 160_000 * 0.99 <= len(samples) <= 160_000 * 1.01
    stamps = [b.timestamp for b in blocks]
    assert stamps == sorted(stamps)
    assert peak == pytest.approx(1000, abs=5)
    assert sum(b.dropped for b in blocks) == 0


async def test_readers_end_with_their_peer_or_the_agent_and_slow_audio_drops(
    server: RunningServer,
) -> None:
    async with sender_and_bot(server.ws_url, tone_hz=440) as (alice, bot):
        slow: list[ReceivedAudio] = []
        alice_video: list[ReceivedVideo] = []
        everyone: list[ReceivedVideo] = []

        async def read_slowly() -> None:
            async for block in bot.audio_frames("alice"):
                slow.append(block)
                if len(slow) == 1:
                    await asyncio.sleep(6.5)  # slower than real time: 1.5 s over the 5 s kept

        async def collect(into: list[ReceivedVideo], peer: str | None) -> None:
            async for frame in bot.video_frames(peer, format="gray"):
                into.append(frame)

        tasks = [
            asyncio.create_task(read_slowly()),
            asyncio.create_task(collect(alice_video, "alice")),
            asyncio.create_task(collect(everyone, None)),
        ]
        await eventually(lambda: len(slow) > 300, seconds(20), "the slow reader catching up")
        assert alice_video and everyone and everyone[0].array.shape == (480, 640)
        await alice.leave()
        await asyncio.wait_for(asyncio.gather(*tasks[:2]), seconds(10))  # alice's readers end
        assert not tasks[2].done()  # the reader of everyone goes on until the bot leaves
        await bot.leave()
        await asyncio.wait_for(tasks[2], seconds(10))
    first, after = slow[0], slow[1]
    log.info(f"slow reader: {after.dropped} blocks dropped, {len(slow)} read")
    # 6.5 s behind with 5 s kept: ~75 blocks of 20 ms lost, the oldest, and said so.
    assert 25 <= after.dropped <= 125, after.dropped
    assert after.timestamp - first.timestamp == pytest.approx((after.dropped + 1) * 0.02, abs=0.03)
    assert all(b.dropped == 0 for b in slow[2:])
