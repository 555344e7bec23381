"""One peer's visit decoded and encoded again into one fixed format (``Recorder(transcode=True)``).

For those who need one codec whatever the senders use; it costs a decoder and an encoder
per peer (the default records the packets as they came: :mod:`peer.media.packet_recorder`).
Only each peer's first track of each kind (the camera and the microphone) is recorded.

Written instead of aiortc's ``MediaRecorder``, which encodes on the event loop, fixes the
rate at 30, and fails on non-monotonic timestamps and on audio plus video in one file.

Format: Matroska (``.mkv``: still playable when the process dies before the end), H.264
(libx264 from PyAV's bundled FFmpeg, preset ultrafast, CRF 23; VP8 where libx264 is
missing) and Opus at 48 kHz stereo (AAC where Opus is missing). Timestamps are in
milliseconds from the peer's first frame (see ``peer.media.timeline``), variable frame
rate. The video keeps the largest size seen before the file opened; frames of any other
size (browsers change resolution with bandwidth) are scaled to it, which keeps the stream
valid for every player.

The frames given to ``put_frame`` are shared: a relay hands the same objects to every
subscriber (aiortc's encoder when an echo bot records, the mosaic, your own consumer).
The worker only reads them: it encodes a copy of its own, stamped with the recording's
timestamps, and leaves the shared frame's ``pts``, ``time_base`` and pixels as they came.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from peer.events import RemoteTrack
from peer.media.errors import MediaError
from peer.media.recording_worker import RecordingWorker, close_matroska, open_matroska
from peer.media.tap import Kind
from peer.media.timeline import AudioStamper, RecordingClock, SenderClock, VideoStamper
from signaling.protocol import PeerId

log = logging.getLogger(__name__)

_MS = Fraction(1, 1000)
_AUDIO_RATE = 48_000
_AUDIO_TIME_BASE = Fraction(1, _AUDIO_RATE)
_OPEN_WAIT_EXPECTED = 3.0  # s to wait for every expected kind before opening the file
_OPEN_WAIT_UNKNOWN = 1.0  # s to wait for a second kind when expect() was not called
#: Audio placed by the sender's clock is re-aligned past this (s); by arrival, 50 ms.
SYNCED_AUDIO_TOLERANCE = 0.005
_PENDING_LIMIT = 240  # frames held while waiting to open the file
# ultrafast: measured 3x cheaper than veryfast on grainy 640x480 (1.8 vs 5.6 ms a frame),
# at twice the size there and about the same on smooth (already WebRTC-compressed) video.
_X264_PRESET = "ultrafast"


@dataclass(frozen=True)
class RecordingFormat:
    container: str
    suffix: str
    video_codec: str
    audio_codec: str


@functools.cache
def recording_format() -> RecordingFormat:
    """The codecs this PyAV build can encode without external binaries."""
    available = av.codecs_available
    video = "libx264" if "libx264" in available else "libvpx"
    audio = "libopus" if "libopus" in available else "aac"
    return RecordingFormat("matroska", ".mkv", video, audio)


@dataclass(frozen=True)
class _Item:
    kind: Kind
    frame: av.VideoFrame | av.AudioFrame
    media_time: float | None  # the sender's time; the recording's own pts live in the worker
    arrival: float
    sender: SenderClock | None  # its track's: placed by the sender's wall clock once synced


def _own_video(frame: av.VideoFrame) -> av.VideoFrame:
    """A copy of ``frame``'s picture that only the worker holds (0.03 ms at 1280x720).

    Copied before anything else: even PyAV's reformat writes the colour tags of the frame
    it scales for as long as it runs, and ``frame`` is shared with other threads.
    """
    copy = av.VideoFrame(frame.width, frame.height, frame.format.name)
    for source, target in zip(frame.planes, copy.planes, strict=True):
        if source.line_size <= 0:
            raise MediaError(
                f"cannot copy a {frame.format.name} plane of line size {source.line_size}"
            )
        row = min(source.line_size, target.line_size)
        rows_in = np.frombuffer(memoryview(source), np.uint8).reshape(-1, source.line_size)
        rows_out = np.frombuffer(memoryview(target), np.uint8).reshape(-1, target.line_size)
        rows_out[:, :row] = rows_in[:, :row]
    return copy


def _own_audio(frame: av.AudioFrame) -> av.AudioFrame:
    """A copy of ``frame``'s samples that only the worker holds (the resampler passes
    frames already in the encoder's format through as they are)."""
    copy = av.AudioFrame(
        format=frame.format.name, layout=frame.layout.name, samples=frame.samples, align=1
    )
    copy.sample_rate = frame.sample_rate
    for source, target in zip(frame.planes, copy.planes, strict=True):
        samples_out = np.frombuffer(memoryview(target), np.uint8)
        samples_out[:] = np.frombuffer(memoryview(source), np.uint8)[: samples_out.size]
    return copy


class _Muxer:
    """An open file with its streams; used only by one visit's worker thread."""

    def __init__(self, path: Path, kinds: set[Kind], size: tuple[int, int]) -> None:
        fmt = recording_format()
        self.container = open_matroska(path, fmt.container)
        self.video: av.VideoStream | None = None
        self.audio: av.AudioStream | None = None
        self.size = size
        if "video" in kinds:
            video = self.container.add_stream(fmt.video_codec, rate=30)
            if not isinstance(video, av.VideoStream):
                raise MediaError(f"{fmt.video_codec} is not a video codec")
            video.width, video.height = size
            video.pix_fmt = "yuv420p"
            video.codec_context.time_base = _MS  # variable frame rate: pts in ms, not 1/30
            if fmt.video_codec == "libx264":
                video.codec_context.options = {"preset": _X264_PRESET, "tune": "zerolatency"}
            else:
                video.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
                video.codec_context.bit_rate = 2_000_000
            self.video = video
        if "audio" in kinds:
            audio = self.container.add_stream(fmt.audio_codec, rate=_AUDIO_RATE)
            if not isinstance(audio, av.AudioStream):
                raise MediaError(f"{fmt.audio_codec} is not an audio codec")
            audio.layout = "stereo"
            self.audio = audio
        self._reformatter = VideoReformatter()  # our own: a frame's built-in one is shared
        self._resampler: av.AudioResampler | None = None
        self._resampler_input: tuple[str, str, int] | None = None

    def write_video(self, shared: av.VideoFrame, pts: int) -> None:
        """Encodes ``shared`` at ``pts`` (ms) through a copy: ``shared`` is only read."""
        if self.video is None:
            return
        frame = _own_video(shared)
        width, height = self.size
        if (frame.width, frame.height) != self.size or frame.format.name != "yuv420p":
            frame = self._reformatter.reformat(frame, width=width, height=height, format="yuv420p")
        frame.pts, frame.time_base = pts, _MS
        self.container.mux(self.video.encode(frame))

    def write_audio(self, shared: av.AudioFrame, stamper: AudioStamper) -> None:
        """Encodes ``shared`` at the stamper's next pts through a copy: ``shared`` is only read."""
        if self.audio is None:
            return
        for chunk in self._resample(_own_audio(shared)):
            chunk.pts = stamper.take(chunk.samples)
            chunk.time_base = _AUDIO_TIME_BASE
            self.container.mux(self.audio.encode(chunk))

    def _resample(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._resampler is None or shape != self._resampler_input:
            if self.audio is None:
                return []
            self._resampler = av.AudioResampler(
                format=self.audio.codec_context.format.name, layout="stereo", rate=_AUDIO_RATE
            )
            self._resampler_input = shape
        return self._resampler.resample(frame)

    def close(self) -> None:
        close_matroska(self.container, (self.video, self.audio))


class TranscodingVisit(RecordingWorker):
    """One peer's visit: one file, one worker thread that owns every encoder."""

    def __init__(self, peer: PeerId, path: Path, expected: set[Kind], *, queue_size: int) -> None:
        super().__init__(peer, queue_size=queue_size)
        self.path = path
        self.expected = set(expected)
        self.seen: set[Kind] = set()
        self.ended: set[Kind] = set()
        self.opened = False
        self.written = {"audio": 0, "video": 0}
        self.dropped = {"audio": 0, "video": 0}
        self.encode_seconds = 0.0
        self._pending: list[_Item] = []
        self._muxer: _Muxer | None = None
        self._clock = RecordingClock()
        self._video_pts = VideoStamper()
        self._audio_pts = AudioStamper()
        self._late_kind_logged = False
        self._start_worker()

    # --- event loop side -------------------------------------------------------------------

    def offer(
        self, kind: Kind, frame: av.VideoFrame | av.AudioFrame, sender: SenderClock | None = None
    ) -> None:
        """Queue ``frame``; with its track's ``sender`` clock synced (a sender report came),
        it is placed by the sender's wall clock, on one timeline with the other kind."""
        self.seen.add(kind)
        if self.failed:
            return
        item = _Item(kind, frame, frame.time, time.monotonic(), sender)
        if not self._put(item):
            self.dropped[kind] += 1
            total = self.dropped["audio"] + self.dropped["video"]
            if total == 1 or total % 100 == 0:
                log.warning(
                    "recorder of %s is behind: dropped %d video and %d audio frames so far",
                    self.peer,
                    self.dropped["video"],
                    self.dropped["audio"],
                )

    def track_started(self, track: RemoteTrack) -> None:
        return None

    def track_ended(self, track: RemoteTrack) -> None:
        self.ended.add(track.kind)

    def files(self) -> list[Path]:
        return [self.path] if self.has_file() else []

    def all_ended(self) -> bool:
        waiting_for = self.expected or self.seen
        return bool(waiting_for) and waiting_for <= self.ended

    def wait(self, timeout: float | None = None) -> Path | None:
        """Blocks until the file is closed: call from a thread, not from the loop."""
        self._done.wait(timeout)
        return self.path if self._done.is_set() and self.has_file() else None

    def has_file(self) -> bool:
        return self.opened and self.path.exists()

    # --- worker thread -------------------------------------------------------------------

    def _take(self, item: object) -> None:
        if not isinstance(item, _Item):
            return
        if self._muxer is None:
            self._pending.append(item)
            if len(self._pending) > _PENDING_LIMIT:
                self._pending.pop(0)
            self._maybe_open(time.monotonic())
        else:
            self._write(item)

    def _idle(self, now: float) -> None:
        self._maybe_open(now)

    def _forget(self) -> None:
        self._muxer = None  # the encoders and the file go now, whoever still holds the visit
        self._pending = []

    def _maybe_open(self, now: float) -> None:
        if not self._pending:
            return
        seen = {item.kind for item in self._pending}
        wait = _OPEN_WAIT_EXPECTED if self.expected else _OPEN_WAIT_UNKNOWN
        complete = seen >= self.expected if self.expected else seen == {"audio", "video"}
        synced = all(i.sender is None or i.sender.synced for i in self._pending)
        if (complete and synced) or now - self._pending[0].arrival >= wait:
            self._open(seen)

    def _open(self, kinds: set[Kind]) -> None:
        sizes = [
            (item.frame.width, item.frame.height)
            for item in self._pending
            if isinstance(item.frame, av.VideoFrame)
        ]
        width, height = max(sizes, key=lambda s: s[0] * s[1]) if sizes else (640, 480)
        size = (width - width % 2, height - height % 2)
        self._muxer = _Muxer(self.path, kinds, size)
        self.opened = True
        log.info(
            "recording %s to %s (%s, video %dx%d)",
            self.peer,
            self.path,
            "+".join(sorted(kinds)),
            *size,
        )
        pending, self._pending = self._pending, []
        for item in pending:
            self._write(item)

    def _write(self, item: _Item) -> None:
        muxer = self._muxer
        if muxer is None:
            return
        started = time.perf_counter()
        media, sender = item.media_time, item.sender
        wall = None if sender is None or media is None else sender.wallclock_of(media)
        if wall is None:  # no sender report (yet): its kind's own media clock
            t = self._clock.place(item.kind, media, item.arrival)
        else:  # both kinds on the sender's wall clock: in sync
            t = self._clock.place("sender", wall, item.arrival)
            # Sender times have no arrival jitter: audio follows corrections over 5 ms.
            self._audio_pts.tolerance = SYNCED_AUDIO_TOLERANCE
        if isinstance(item.frame, av.VideoFrame):
            if muxer.video is None:
                self._note_late_kind(item.kind)
                return
            pts = self._video_pts.stamp(t)
            if pts is None:
                return
            muxer.write_video(item.frame, pts)
        else:
            if muxer.audio is None:
                self._note_late_kind(item.kind)
                return
            if not self._audio_pts.admit(t):
                return
            muxer.write_audio(item.frame, self._audio_pts)
        self.written[item.kind] += 1
        self.encode_seconds += time.perf_counter() - started

    def _note_late_kind(self, kind: Kind) -> None:
        if not self._late_kind_logged:
            self._late_kind_logged = True
            log.warning("%s of %s came after %s was opened without it", kind, self.peer, self.path)

    def _close(self) -> None:
        if self._muxer is None and self._pending and not self.failed:
            self._open({item.kind for item in self._pending})
        if self._muxer is None:
            return
        self._muxer.close()
        frames = self.written["audio"] + self.written["video"]
        log.info(
            "recorded %s: %d video and %d audio frames, dropped %d/%d, repaired %d pts, "
            "%.2f ms per frame -> %s",
            self.peer,
            self.written["video"],
            self.written["audio"],
            self.dropped["video"] + self._video_pts.dropped,
            self.dropped["audio"] + self._audio_pts.dropped,
            self._video_pts.repaired,
            1000 * self.encode_seconds / max(1, frames),
            self.path,
        )
