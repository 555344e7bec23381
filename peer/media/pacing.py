"""Real-time pacing for fixed-rate sources, without drift.

aiortc's ``VideoStreamTrack.next_timestamp`` adds one frame period to the last wake-up
time, so every late wake-up is carried forward. Here frame ``n`` is due at
``start + n / rate`` and its pts is ``n * clock_rate / rate``: nothing accumulates.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Tick:
    """One frame to produce: its index, its pts (in 1/clock_rate units) and when it is due."""

    index: int
    pts: int
    due: float


class FrameClock:
    """Hands out frame slots at ``rate`` per second on a monotonic clock.

    A consumer that stops reading for longer than ``max_lag`` (no peer connected, a
    stalled loop) makes the clock skip the missed slots instead of bursting them out:
    pts keep following real time and stay strictly increasing.
    """

    def __init__(self, rate: Fraction | int, clock_rate: int, *, max_lag: float = 0.5) -> None:
        if rate <= 0 or clock_rate <= 0:
            raise ValueError(f"rate and clock_rate must be positive, got {rate} and {clock_rate}")
        self.rate = Fraction(rate)
        self.clock_rate = clock_rate
        self.max_lag = max_lag
        self._start: float | None = None
        self._next = 0
        self.skipped = 0

    def next(self, now: float) -> Tick:
        """The next slot, given the current monotonic time (the first call starts the clock)."""
        if self._start is None:
            self._start = now
        start = self._start
        index = self._next
        due = start + float(index / self.rate)
        if now - due > self.max_lag:
            caught_up = math.ceil((now - start) * self.rate)
            self.skipped += caught_up - index
            index = caught_up
            due = start + float(index / self.rate)
        self._next = index + 1
        pts = index * self.clock_rate * self.rate.denominator // self.rate.numerator
        return Tick(index, pts, due)

    async def wait(self) -> Tick:
        """The next slot, once it is due: what a paced source awaits before each frame."""
        tick = self.next(time.monotonic())
        delay = tick.due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        return tick
