"""Timestamps for a recording: one clock for audio and video, always increasing. Pure.

aiortc starts each received track's pts at 0 on its own first packet, so audio and video
pts cannot be compared directly. Each kind is anchored to the wall-clock arrival of its
first frame (relative to the first frame of either kind, which is 0), then follows its
own media time (``frame.time``), which is smoother than arrival times. A media clock that
jumps away from the arrival clock (a sender restart) is re-anchored.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RecordingClock:
    """Places frames of several kinds on one recording timeline, in seconds."""

    max_skew: float = 2.0
    reanchored: int = 0
    _origin: float | None = None
    _offsets: dict[str, float] = field(default_factory=dict)

    def place(self, kind: str, media_time: float | None, arrival: float) -> float:
        """The frame's time on the recording clock (``arrival`` is a monotonic time).

        A frame without a timestamp is placed at its arrival.
        """
        if self._origin is None:
            self._origin = arrival
        wall = arrival - self._origin
        if media_time is None:
            return wall
        offset = self._offsets.get(kind)
        if offset is None or abs(media_time + offset - wall) > self.max_skew:
            if offset is not None:
                self.reanchored += 1
            offset = wall - media_time
            self._offsets[kind] = offset
        return media_time + offset


@dataclass
class VideoStamper:
    """Strictly increasing pts in ``rate`` ticks per second (1000 for Matroska).

    Small steps back (jitter, duplicate timestamps) are repaired by nudging the frame one
    tick after the last; frames more than ``max_back`` seconds in the past are dropped.
    """

    rate: int = 1000
    max_back: float = 0.5
    repaired: int = 0
    dropped: int = 0
    _last: int | None = None

    def stamp(self, t: float) -> int | None:
        pts = round(t * self.rate)
        if self._last is not None and pts <= self._last:
            if (self._last - pts) / self.rate > self.max_back:
                self.dropped += 1
                return None
            self.repaired += 1
            pts = self._last + 1
        self._last = pts
        return pts


@dataclass
class AudioStamper:
    """Sample-accurate audio pts: contiguous while the input is, gaps kept, overlaps dropped.

    Audio encoders want samples back to back, so pts follow a running sample count; the
    count only jumps forward when the input skips more than ``tolerance`` seconds (lost
    audio becomes a gap), and input that lies ``tolerance`` behind it is dropped.
    """

    rate: int = 48_000
    tolerance: float = 0.05
    gaps: int = 0
    dropped: int = 0
    _next: int | None = None

    def admit(self, t: float) -> bool:
        """Whether a frame starting at ``t`` seconds is kept; moves the cursor over gaps."""
        target = round(t * self.rate)
        slack = round(self.tolerance * self.rate)
        if self._next is None:
            self._next = max(0, target)
        elif target > self._next + slack:
            self.gaps += 1
            self._next = target
        elif target < self._next - slack:
            self.dropped += 1
            return False
        return True

    def take(self, samples: int) -> int:
        """The pts of the next ``samples`` samples written (after ``admit``)."""
        pts = self._next or 0
        self._next = pts + samples
        return pts


@dataclass
class RtpUnwrapper:
    """One stream's RTP timestamps as an ever-growing tick count from its first packet.

    RTP timestamps are 32 bits and wrap (after 13 h at 90 kHz, 25 h at 48 kHz); each step
    is read modulo 2**32, so a step back (reordering) stays a small negative step.
    """

    ticks: int = 0
    _last: int | None = None

    def unwrap(self, timestamp: int) -> int:
        if self._last is not None:
            step = (timestamp - self._last) % 2**32
            self.ticks += step - 2**32 if step >= 2**31 else step
        self._last = timestamp
        return self.ticks


_NTP_UNIT = 2.0**-32  # seconds per unit of a 64-bit NTP timestamp
REPORTS_KEPT = 12  # sender reports a SenderClock takes its mapping from (~12 s of aiortc's)


@dataclass
class SenderClock:
    """One remote stream's RTP clock on its sender's wall clock, from RTCP sender reports.

    Each sender report pairs an NTP time (the sender's wall clock) with an RTP timestamp;
    the sender's audio and video share that wall clock, so placing both by it is lip sync
    (RFC 3550 6.4.1). aiortc stamps a report with the time it *sent* its last packet, so
    a report taken while the sender's loop was held up reads late (0.3 s seen under load):
    of the last ``REPORTS_KEPT`` reports the earliest mapping counts (the least delay),
    which still follows slow drift between the sender's two clocks. The receiver's frames
    carry aiortc's mapped timestamps (0 at the first frame): ``anchor`` gives the RTP
    timestamp mapped to 0 and the clock rate. Reports come on the event loop, recorder
    threads read: each field is replaced whole.
    """

    reports: int = 0
    _origin: int | None = None  # the RTP timestamp mapped to 0
    _rate: int = 0
    _early: list[tuple[int, int]] = field(default_factory=list)  # reports before the anchor
    _last: int | None = None  # the last report's mapped RTP timestamp (for unwrapping)
    _zeros: tuple[float, ...] = ()  # per report kept: sender time of mapped timestamp 0
    _zero: float | None = None  # the earliest of them

    def report(self, ntp: int, rtp: int) -> None:
        """A sender report: 64-bit NTP timestamp, 32-bit RTP timestamp."""
        self.reports += 1
        if self._origin is None:
            self._early = [*self._early[-REPORTS_KEPT + 1 :], (ntp, rtp)]
            return
        near = self._last if self._last is not None else 0
        step = (rtp - self._origin - near) % 2**32
        mapped = near + (step - 2**32 if step >= 2**31 else step)
        self._last = mapped
        zeros = (*self._zeros[-REPORTS_KEPT + 1 :], ntp * _NTP_UNIT - mapped / self._rate)
        self._zeros = zeros
        self._zero = min(zeros)

    def anchor(self, origin: int, clock_rate: int) -> None:
        """The RTP timestamp of the first frame (mapped timestamp 0) and the stream's clock
        rate; the first call counts."""
        if self._origin is not None:
            return
        self._rate = clock_rate
        self._origin = origin % 2**32
        early, self._early = self._early, []
        self.reports -= len(early)
        for ntp, rtp in early:
            self.report(ntp, rtp)

    @property
    def synced(self) -> bool:
        """Whether :meth:`wallclock` has what it needs (a report and the anchor)."""
        return self._zero is not None

    def wallclock(self, timestamp: int) -> float | None:
        """The sender's wall clock (seconds) at mapped ``timestamp`` (in the stream's clock
        rate), None before both a report and the anchor."""
        zero = self._zero
        return None if zero is None else zero + timestamp / self._rate

    def wallclock_of(self, media_time: float) -> float | None:
        """The sender's wall clock at ``media_time`` seconds of mapped time (a decoded
        frame's ``time``: aiortc's decoders keep the mapped timestamp as pts)."""
        zero = self._zero
        return None if zero is None else zero + media_time
