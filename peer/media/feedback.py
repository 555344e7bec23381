"""What a shared encoder does with its receivers' feedback: pure decisions, no I/O.

One encoder serves every receiver of a source, so one receiver's feedback reaches all:
a lossy receiver's picture-loss requests (PLI/FIR) would give everyone keyframes, and a
congested receiver's rate estimate (REMB) lowers everyone's quality. ``KeyframeGate``
coalesces the first, ``BitrateFollower`` follows the lowest estimate without a keyframe
(a libvpx restart) on every small move. Times are seconds on any monotonic clock.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["KEYFRAME_INTERVAL", "BitrateFollower", "KeyframeGate", "TierSplit"]

K = TypeVar("K", bound=Hashable)

#: At most one keyframe per this many seconds for picture-loss requests.
KEYFRAME_INTERVAL = 0.5


@dataclass
class KeyframeGate:
    """Whether the next frame is a keyframe.

    Picture-loss requests wait until ``interval`` has passed since the last keyframe. An
    urgent request (a receiver that has had no keyframe yet and so shows nothing) is
    served on the next frame.
    """

    interval: float = KEYFRAME_INTERVAL
    _last: float = -math.inf
    _pending: bool = False
    _urgent: bool = False

    def request(self, *, urgent: bool = False) -> None:
        self._pending = True
        self._urgent = self._urgent or urgent

    def take(self, now: float) -> bool:
        """True when the frame encoded now must be a keyframe; that counts as produced."""
        if not self._pending or (not self._urgent and now - self._last < self.interval):
            return False
        self.produced(now)
        return True

    def produced(self, now: float) -> None:
        """A keyframe went out (asked for, or the encoder restarted): it answers every request."""
        self._last = now
        self._pending = self._urgent = False


@dataclass
class BitrateFollower:
    """The shared encoder's target: the lowest receiver estimate, clamped to aiortc's bounds.

    A move smaller than ``threshold`` (relative) is ignored; a fall is followed after
    ``settle`` seconds since the last change, a rise only after ``rise_hold`` seconds (an
    estimate that comes back up often goes down again). Each change costs one keyframe.
    """

    initial: int
    low: int
    high: int
    threshold: float = 0.25
    settle: float = 1.0
    rise_hold: float = 5.0
    target: int = 0
    _estimates: dict[Hashable, int] = field(default_factory=dict)
    _changed_at: float = -math.inf

    def __post_init__(self) -> None:
        self.target = self.target or self.initial

    def estimate(self, receiver: Hashable, bitrate: int, now: float) -> bool:
        """A receiver's estimate (REMB); True when the target changed."""
        self._estimates[receiver] = max(self.low, min(bitrate, self.high))
        return self._retarget(now)

    def forget(self, receiver: Hashable, now: float) -> bool:
        """A receiver left: the others may allow more."""
        if self._estimates.pop(receiver, None) is None:
            return False
        return self._retarget(now)

    @property
    def receivers(self) -> frozenset[Hashable]:
        return frozenset(self._estimates)

    @property
    def lowest(self) -> int | None:
        return min(self._estimates.values()) if self._estimates else None

    def _retarget(self, now: float) -> bool:
        wanted = self.lowest
        if wanted is None or abs(wanted - self.target) <= self.threshold * self.target:
            return False
        hold = self.settle if wanted < self.target else self.rise_hold
        if now - self._changed_at < hold:
            return False
        self.target = wanted
        self._changed_at = now
        return True


@dataclass
class TierSplit(Generic[K]):
    """Which receivers get a second, lower-rate encoding of the same source.

    Following the lowest estimate gives everyone the worst receiver's quality. When the
    estimates (clamped to the codec's bounds by the caller) spread more than
    ``split_ratio`` (highest over lowest) for ``hold`` seconds, the receivers below
    ``highest / split_ratio`` get their own encoder at their rate and the others keep a
    faster one. The hold lets a new receiver's estimate ramp up (browsers start near
    100 kbps) without a second encoder. A receiver leaves the lower tier only once its
    estimate is within ``merge_ratio`` of the highest (no flapping around the boundary).
    Costs one more encode while split.
    """

    split_ratio: float = 2.0
    merge_ratio: float = 1.5
    hold: float = 3.0
    low: frozenset[K] = frozenset()
    _spread_since: float | None = None

    def plan(self, estimates: Mapping[K, int], now: float) -> frozenset[K]:
        """The receivers for the lower tier now (empty: one tier for all)."""
        top = max(estimates.values(), default=0)
        wanted = frozenset(
            receiver
            for receiver, bitrate in estimates.items()
            if bitrate * self.split_ratio < top
            or (receiver in self.low and bitrate * self.merge_ratio < top)
        )
        if not wanted:
            self._spread_since = None
        elif not self.low:  # not split yet: only once the spread has lasted
            if self._spread_since is None:
                self._spread_since = now
            if now - self._spread_since < self.hold:
                return self.low
        self.low = wanted
        return self.low
