"""MicrophoneTrack's pacing, fed as PortAudio feeds it: 20 ms blocks on a thread of their
own, in real time, read back as the shared encoder reads the track. What waited while
nobody read is dropped at the first read; blocks go out as they come (a burst after the
machine was starved at once), but for a source that posts in bursts, which goes out at the
pace of speech. The device itself is tested against a real sound server in
tests/peer/test_desktop_audio.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from peer.media.devices import portaudio
from peer.media.microphone import MicrophoneTrack
from tests.support import eventually, seconds

BLOCK = 960


def _block(value: int) -> np.ndarray:
    return np.full((BLOCK, 1), value, np.int16)


@contextmanager
def card(
    track: MicrophoneTrack, value: int, *, burst: int = 0, group: int = 1
) -> Iterator[list[int]]:
    """A sound card calling ``track`` back with a block of ``value`` every 20 ms, the
    first ``burst`` of them at once (a card that was held up), or ``group`` at once every
    ``group`` blocks (a source that posts in bursts); yields the count sent."""
    flags = portaudio().CallbackFlags()
    stop = threading.Event()
    sent = [0]

    def run() -> None:
        start = time.monotonic()
        while not stop.is_set():
            track._callback(_block(value), BLOCK, None, flags)
            sent[0] += 1
            due = max(0, sent[0] - burst) // group * group
            delay = start + due * 0.02 - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    thread = threading.Thread(target=run, name="card", daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join(seconds(5))


async def _read(track: MicrophoneTrack) -> None:
    """Reads as the shared encoder reads, until cancelled."""
    while True:
        await track.recv()


async def test_what_waited_while_nobody_read_is_dropped_at_the_first_read() -> None:
    track = MicrophoneTrack()
    with card(track, 0) as sent:
        await eventually(lambda: sent[0] >= 25, seconds(5), "half a second of blocks")
        await track.recv()
        assert len(track._blocks) <= 1  # the newest at most: nothing stale goes out
        assert track.dropped >= 23
    track.stop()


async def test_a_burst_from_a_source_that_is_not_bursty_goes_out_at_once() -> None:
    """Ten blocks (200 ms) handed over at once, then one every 20 ms (a sound server that
    was starved): old sound, sent at once instead of being heard late for the whole call."""
    track = MicrophoneTrack()
    reading = asyncio.ensure_future(_read(track))
    try:
        with card(track, 0) as sent:
            await eventually(lambda: sent[0] >= 50, seconds(5), "a second of blocks")
        with card(track, 0, burst=10) as sent:
            await eventually(lambda: sent[0] >= 25, seconds(5), "the burst and more")
            assert not track.bursty
            assert len(track._blocks) <= 2
    finally:
        reading.cancel()
        track.stop()
    assert (track.skipped, track.rushed) == (0, 0)


async def test_a_source_that_posts_in_bursts_goes_out_at_the_pace_of_speech() -> None:
    """A second at once every second (PulseAudio's sine source posts 2 s): sent one block
    per 20 ms, nothing dropped, skipped or rushed, however quiet."""
    track = MicrophoneTrack()
    times: list[float] = []

    async def read() -> None:
        while True:
            await track.recv()
            times.append(time.monotonic())

    reading = asyncio.ensure_future(read())
    try:
        with card(track, 0, group=50):
            await eventually(lambda: len(times) >= 150, seconds(6), "three seconds sent")
    finally:
        reading.cancel()
        track.stop()
    assert track.bursty
    assert (track.skipped, track.rushed) == (0, 0)
    assert track.dropped <= 1  # the first read: a burst that came before it
    rate = (len(times) - 51) / (times[-1] - times[50])  # blocks a second, after the first
    assert 45 <= rate <= 55, rate
