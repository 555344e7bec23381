"""One peer's visit recorded as its packets came: no decoding, no encoding.

The encoded frames aiortc depacketized (VP8, H.264, Opus) go into a Matroska file as they
are, one stream per remote track (audio, camera, screen share...), so a recording costs
about what receiving does and keeps the codec the sender chose. :class:`PacketVisit` is
what :class:`peer.media.recorder.Recorder` starts per peer when it does not transcode.

- **Streams.** Matroska needs every stream before its header. The file opens once each
  live track (``track_started``) has a usable first packet (a keyframe for video) and the
  kinds the peer was expected to send (``expect``) are there, or after ``OPEN_WAIT``
  seconds with what came. A track that arrives after that (a screen share started later)
  closes the file and opens the next *segment* (``name-2.mkv``...) with every live track:
  the tracks that were there go on in it from their next keyframe (asked for with a PLI),
  so the camera misses a few frames at the switch, and audio nothing.
- **Keyframes.** Each video stream starts on a keyframe: packets before it are dropped.
  Resolution changes stay in the stream (VP8 and H.264 keyframes carry their size; the
  header has the first one).
- **Time, in sync.** ``FileTimeline.file_time`` (:mod:`peer.media.file_timeline`) maps a
  packet's (track, RTP timestamp) to seconds in the file by the sender's wall clock: each
  track's RTCP sender reports (``RemoteTrack.sender_clock``) map its RTP clock to that one
  clock, so a peer's audio and video sit where the sender captured them. The file waits (its
  packets held, bounded) until every track has had a report, so it is in sync from its first
  second; a track with none within ``OPEN_WAIT`` (a sender that sends none) is placed by its
  arrival instead, logged once. Times never go back within a stream (nudged, counted).
- **Off the loop.** The loop only queues (bounded); one thread per visit writes. When the
  queue is full the packet is dropped, counted, and for video every packet of that track
  up to its next keyframe too (it could not be decoded), with a PLI asked for.
- **Crash safety.** Clusters of at most 1 s, flushed as written (as the transcoding
  recorder does): a process killed outright leaves a file that plays to its last second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

from peer.events import Kind, RemoteTrack
from peer.media.errors import MediaError
from peer.media.file_timeline import FileTimeline
from peer.media.packets import EncodedFrame
from peer.media.recording_worker import RecordingWorker, open_matroska
from peer.media.timeline import VideoStamper
from signaling.protocol import PeerId

log = logging.getLogger(__name__)

_MS = Fraction(1, 1000)
OPEN_WAIT = 3.0  # s to wait for every live or expected track's first usable packet
_PENDING_LIMIT = 600  # packets held while waiting to open the file (~7 s of audio + video)
#: FFmpeg's names for the codecs WebRTC negotiates (``codec`` of an encoded frame).
_MUXED = {"vp8": "vp8", "h264": "h264", "opus": "opus"}


def codec_name(frame: EncodedFrame) -> str:
    """FFmpeg's name for ``frame``'s codec; MediaError for one Matroska cannot take here."""
    name = frame.codec.rsplit("/", 1)[-1].lower()
    if name not in _MUXED:
        raise MediaError(f"cannot record {frame.codec} packets (only VP8, H.264 and Opus)")
    return _MUXED[name]


def vp8_size(data: bytes) -> tuple[int, int] | None:
    """A VP8 keyframe's picture size from its header (RFC 6386 9.1), None for other frames."""
    if len(data) < 10 or data[0] & 1 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return width, height


def h264_size(data: bytes) -> tuple[int, int] | None:
    """An H.264 keyframe's picture size (Matroska's header needs one), by decoding it."""
    decoder = av.CodecContext.create("h264", "r")
    try:
        frames = decoder.decode(av.Packet(data)) + decoder.decode(None)
    except av.FFmpegError:
        return None
    for frame in frames:
        if isinstance(frame, av.VideoFrame):
            return frame.width, frame.height
    return None


@dataclass
class _Format:
    """What a stream for one track needs: codec and, for video, the latest keyframe's size."""

    codec: str
    width: int = 0
    height: int = 0


@dataclass
class _Stream:
    stream: av.stream.Stream
    video: bool
    stamper: VideoStamper = field(default_factory=VideoStamper)
    waiting_key: bool = True  # video: nothing is written before a keyframe


class _Segment:
    """One open Matroska file with a stream per track; used by the visit's thread only."""

    def __init__(self, path: Path, tracks: dict[RemoteTrack, _Format]) -> None:
        self.path = path
        self.container = open_matroska(path)
        self.timeline = FileTimeline()
        self.streams: dict[RemoteTrack, _Stream] = {}
        self.written = 0
        try:
            for track, fmt in tracks.items():
                if track.kind == "video":
                    stream = self.container.add_mux_stream(
                        fmt.codec, width=fmt.width, height=fmt.height
                    )
                else:
                    stream = self.container.add_mux_stream(fmt.codec, rate=48_000)
                stream.metadata["title"] = f"{track.kind} {track.index}"
                self.streams[track] = _Stream(stream, video=track.kind == "video")
        except Exception:
            self.container.close()
            raise

    @property
    def nudged(self) -> int:
        """Packets whose time went back within their stream, moved one tick after the last."""
        return sum(target.stamper.repaired for target in self.streams.values())

    def write(self, track: RemoteTrack, frame: EncodedFrame) -> bool:
        """Muxes ``frame`` into its track's stream; False when it was left out."""
        target = self.streams[track]
        if target.waiting_key:
            if target.video and not frame.keyframe:
                return False
            target.waiting_key = False
        pts = target.stamper.stamp(self.timeline.file_time(track, frame))
        if pts is None:  # far in the past (a sender restart): resume from a keyframe
            target.waiting_key = target.video
            return False
        packet = av.Packet(frame.data)
        packet.stream = target.stream
        packet.time_base = _MS
        packet.pts = packet.dts = pts
        packet.is_keyframe = frame.keyframe
        self.container.mux(packet)
        self.written += 1
        return True

    def close(self) -> None:
        self.container.close()


def _reported(tracks: set[RemoteTrack]) -> bool:
    """Whether every track whose sender reports are watched has had one (the file waits)."""
    return all(t.sender_clock is None or t.sender_clock.synced for t in tracks)


@dataclass(frozen=True)
class _Queued:
    track: RemoteTrack
    frame: EncodedFrame


class PacketVisit(RecordingWorker):
    """One peer's visit: its files (segments), one writer thread, a bounded queue.

    ``path_for(n)`` names the ``n``-th segment (1 first). Whenever a video track must start
    again from a keyframe, its :meth:`RemoteTrack.request_keyframe` is called on the loop.
    """

    def __init__(
        self,
        peer: PeerId,
        path_for: Callable[[int], Path],
        expected: set[Kind],
        *,
        queue_size: int,
    ) -> None:
        super().__init__(peer, queue_size=queue_size)
        self.path = path_for(1)
        self.expected = set(expected)
        self.opened = False
        self.dropped = {"audio": 0, "video": 0}  # lost to a full queue, resyncs included
        self.skipped = 0  # video packets left out waiting for a keyframe
        self._path_for = path_for
        self._paths: list[Path] = []  # the segments opened, in order
        self._live: frozenset[RemoteTrack] = frozenset()  # replaced, never changed in place
        self._seen: set[RemoteTrack] = set()
        self._ended: set[RemoteTrack] = set()
        self._resync: set[RemoteTrack] = set()  # loop side: dropped until a keyframe
        self._formats: dict[RemoteTrack, _Format] = {}
        self._loop = asyncio.get_running_loop()
        self._pending: list[_Queued] = []
        self._holding: set[RemoteTrack] = set()  # the tracks with packets in _pending
        self._segment: _Segment | None = None
        self._unsynced_logged = False
        self._skew: float | None = None  # the last segment's (arrival - sender time)
        self._start_worker()

    # --- event loop side -------------------------------------------------------------------

    def track_started(self, track: RemoteTrack) -> None:
        self._live = self._live | {track}
        self._ended.discard(track)

    def track_ended(self, track: RemoteTrack) -> None:
        self._live = self._live - {track}
        self._ended.add(track)

    def offer(self, track: RemoteTrack, frame: EncodedFrame) -> None:
        self._seen.add(track)
        if self.failed:
            return
        if track in self._resync:
            if not frame.keyframe:
                self.dropped[track.kind] += 1
                return
            self._resync.discard(track)
        if not self._put(_Queued(track, frame)):
            self.dropped[track.kind] += 1
            if track.kind == "video":
                self._resync.add(track)
                self._ask_keyframe(track)
            total = self.dropped["audio"] + self.dropped["video"]
            if total == 1 or total % 100 == 0:
                log.warning(
                    "recorder of %s is behind: dropped %d video and %d audio packets so far",
                    self.peer,
                    self.dropped["video"],
                    self.dropped["audio"],
                )

    def all_ended(self) -> bool:
        ended_kinds = {track.kind for track in self._ended}
        return bool(self._seen) and self._seen <= self._ended and self.expected <= ended_kinds

    def wait(self, timeout: float | None = None) -> Path | None:
        """Blocks until the files are closed (from a thread): the last segment written."""
        self._done.wait(timeout)
        files = self.files()
        return files[-1] if self._done.is_set() and files else None

    def files(self) -> list[Path]:
        """The segments written so far, in order."""
        return [path for path in self._paths if path.exists()]

    def _ask_keyframe(self, track: RemoteTrack) -> None:
        """On the loop: have the sender send ``track``'s next keyframe now."""
        try:
            track.request_keyframe()
        except Exception:
            log.exception("asking %r for a keyframe failed", track)

    # --- worker thread ---------------------------------------------------------------------

    def _take(self, item: object) -> None:
        if not isinstance(item, _Queued):
            return
        self._note_format(item)
        if self._segment is None:
            self._hold(item)
            self._maybe_open(time.monotonic())
        elif item.track in self._segment.streams:
            self._count(self._segment.write(item.track, item.frame))
        elif self._usable_first(item):
            self._next_segment(item)

    def _idle(self, now: float) -> None:
        self._maybe_open(now)

    def _forget(self) -> None:
        self._segment = None
        self._pending = []

    def _note_format(self, item: _Queued) -> None:
        fmt = self._formats.get(item.track)
        if fmt is None:
            fmt = self._formats[item.track] = _Format(codec_name(item.frame))
        if item.track.kind == "video" and item.frame.keyframe:
            if fmt.codec == "vp8":
                size = vp8_size(item.frame.data)
            else:  # the SPS has it: one keyframe decoded, once per track
                size = None if fmt.width else h264_size(item.frame.data)
            if size is not None:
                fmt.width, fmt.height = size

    @staticmethod
    def _usable_first(item: _Queued) -> bool:
        return item.track.kind == "audio" or item.frame.keyframe

    def _count(self, written: bool) -> None:
        if not written:
            self.skipped += 1

    def _hold(self, item: _Queued) -> None:
        """Keeps ``item`` for the file to come; video only from its track's first keyframe."""
        first = item.track not in self._holding
        if first and item.track.kind == "video" and not item.frame.keyframe:
            self.skipped += 1
            return
        self._holding.add(item.track)
        self._pending.append(item)
        if len(self._pending) > _PENDING_LIMIT:
            self._pending.pop(0)

    def _maybe_open(self, now: float) -> None:
        if self._segment is not None or not self._pending:
            return
        ready = {item.track for item in self._pending}
        kinds = {track.kind for track in ready}
        expected = self.expected or {"audio", "video"}
        complete = self._live <= ready and expected <= kinds
        if (complete and _reported(ready)) or now - self._pending[0].frame.arrival >= OPEN_WAIT:
            self._open(ready)

    def _open(self, tracks: set[RemoteTrack]) -> None:
        order = sorted(tracks, key=lambda t: (t.kind != "video", t.kind, t.index, t.id))
        path = self._path_for(len(self._paths) + 1)
        self._segment = _Segment(path, {track: self._formats[track] for track in order})
        streams = self._segment.streams
        self._paths.append(path)
        self.opened = True
        log.info(
            "recording %s to %s (%s)",
            self.peer,
            path,
            ", ".join(f"{t.kind} {t.index} {self._formats[t].codec}" for t in order),
        )
        pending, self._pending = self._pending, []
        self._holding = set()
        kept = [(item.track, item.frame) for item in pending if item.track in streams]
        if not self._segment.timeline.begin(kept, self._skew) and not self._unsynced_logged:
            self._unsynced_logged = True
            log.warning(
                "no RTCP sender report from %s within %.0f s: its tracks are placed by "
                "arrival, not in sync",
                self.peer,
                OPEN_WAIT,
            )
        for item in pending:
            if item.track in self._segment.streams:
                self._count(self._segment.write(item.track, item.frame))

    def _next_segment(self, first: _Queued) -> None:
        """A track the open file has no stream for: the next file has one for every track."""
        old = self._segment
        if old is None:
            return
        carried = {track for track in old.streams if track not in self._ended}
        self._close_segment()
        self._pending, self._holding = [first], {first.track}
        self._open(carried | {first.track})
        for track in carried:
            if track.kind == "video":
                self._loop.call_soon_threadsafe(self._ask_keyframe, track)

    def _close_segment(self) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        self._skew = segment.timeline.skew
        segment.close()
        log.info(
            "recorded %s: %d packets, %d skipped waiting for keyframes, dropped %d video "
            "and %d audio, %d nudged forward, %d placed by arrival, %s -> %s",
            self.peer,
            segment.written,
            self.skipped,
            self.dropped["video"],
            self.dropped["audio"],
            segment.nudged,
            segment.timeline.estimated,
            "in sync" if segment.timeline.synced else "not in sync",
            segment.path,
        )

    def _close(self) -> None:
        if self._segment is None and self._pending and not self.failed:
            self._open({item.track for item in self._pending})
        self._close_segment()
