"""Where each recorded packet goes in its file: the sender's clock, from its reports. Pure.

Lip sync: audio and video of one peer are placed on the sender's wall clock (RTCP sender
reports, :class:`peer.media.timeline.SenderClock` on each ``RemoteTrack``), not on arrival
times, so a picture and the sound captured with it land together in the file. Apart from
:mod:`peer.media.packet_recorder` (the file and its thread) so the rule is read and tested
on its own.
"""

from __future__ import annotations

from peer.events import RemoteTrack
from peer.media.packets import EncodedFrame
from peer.media.timeline import RecordingClock, RtpUnwrapper


class FileTimeline:
    """Where each packet goes in one file, in seconds from the file's start.

    Synced (some track had a sender report when the file opened): a packet's time is its
    sender's wall clock at its RTP timestamp minus the file's start on that clock. A track
    without a report yet is placed by its arrival, carried to the sender's clock by the
    smallest (arrival - sender time) seen, until its first report. Unsynced (no report at
    all: a sender that sends none): each track's RTP clock anchored where its first packet
    arrived (``RecordingClock``).
    """

    def __init__(self) -> None:
        self.synced = False
        #: Packets placed by arrival in a synced file (their track had no report yet).
        self.estimated = 0
        self._start: float | None = None  # the file's start on the sender's wall clock
        self._skew: float | None = None  # the least (arrival - sender time) seen
        self._anchors: dict[RemoteTrack, float] = {}  # estimated: sender time - RTP time
        self._clock = RecordingClock()
        self._rtp: dict[RemoteTrack, RtpUnwrapper] = {}

    @property
    def skew(self) -> float | None:
        """The least (arrival - sender time) seen, None before a report."""
        return self._skew

    def begin(self, items: list[tuple[RemoteTrack, EncodedFrame]], skew: float | None) -> bool:
        """Fix the file's start from its first packets (those held while it waited) and
        ``skew`` (a previous file's, if any); whether the file is synced."""
        if skew is not None:
            self._note_skew(skew)
        walls = [_sender_time(track, frame) for track, frame in items]
        for (_, frame), wall in zip(items, walls, strict=True):
            if wall is not None:
                self._note_skew(frame.arrival - wall)
        self.synced = self._skew is not None
        if self.synced:
            self._start = min(self._wall(track, frame) for track, frame in items)
        return self.synced

    def file_time(self, track: RemoteTrack, frame: EncodedFrame) -> float:
        """``frame``'s time in the file (see the class docstring)."""
        if not self.synced:
            ticks = self._rtp.setdefault(track, RtpUnwrapper()).unwrap(frame.timestamp)
            key = f"{track.kind}{track.index}"
            return self._clock.place(key, ticks / frame.clock_rate, frame.arrival)
        wall = self._wall(track, frame)
        if self._start is None:
            self._start = wall
        return wall - self._start

    def _wall(self, track: RemoteTrack, frame: EncodedFrame) -> float:
        wall = _sender_time(track, frame)
        if wall is not None:
            self._note_skew(frame.arrival - wall)
            return wall
        skew = self._skew if self._skew is not None else 0.0
        anchor = self._anchors.setdefault(track, frame.arrival - skew - frame.seconds)
        self.estimated += 1
        return frame.seconds + anchor

    def _note_skew(self, skew: float) -> None:
        if self._skew is None or skew < self._skew:
            self._skew = skew


def _sender_time(track: RemoteTrack, frame: EncodedFrame) -> float | None:
    clock = track.sender_clock
    return None if clock is None else clock.wallclock(frame.timestamp)
