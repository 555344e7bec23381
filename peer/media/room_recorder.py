"""The whole room in one file: the mosaic of every video track and every peer's audio mixed,
encoded once (``meshpeer join --record-room FILE``).

Unlike :class:`peer.media.recorder.Recorder` (one file per peer), the picture is made here:
a :class:`peer.media.mosaic.Mosaic` keeps each tile's newest frame (peers arrive and leave,
names on the tiles), and one worker thread renders it at a fixed rate on its own clock (a
frame every ``1 / fps`` s whether or not anyone sent one), mixes the audio every 20 ms and
encodes both. Nothing of that runs on the event loop: ``put_frame`` only keeps a reference
to a video frame (keep-latest per tile) or queues an audio frame (bounded; a full queue
drops and counts).

Audio: every remote audio track mixed by :class:`peer.media.audio_mix.AudioMix` (a jitter
buffer of 20 ms blocks per track, summed and clipped), shared with the speaker. Nobody
speaking is silence, so the audio runs for the whole recording.

Format: Matroska with the encoder the per-peer recorder picks (``recording_format``:
libx264 ultrafast/zerolatency, else VP8) and Opus, written with clusters of at most 1 s
flushed as written: a SIGKILLed process leaves a file that plays up to about its last
second.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

from peer.events import RemoteTrack
from peer.media.audio_mix import AUDIO_RATE, BLOCK_SAMPLES, AudioMix, is_native, to_samples
from peer.media.errors import MediaError
from peer.media.mosaic import Mosaic, grid
from peer.media.pacing import FrameClock
from peer.media.recording_worker import close_matroska, open_matroska
from peer.media.tap import FrameConsumer
from peer.media.transcode_recorder import recording_format
from signaling.protocol import PeerId

log = logging.getLogger(__name__)

BLOCK_SECONDS = BLOCK_SAMPLES / AUDIO_RATE
_AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
_AUDIO_QUEUE = 256  # audio frames waiting for the worker (~1.7 s of 3 peers)
_FINISH_AT_EXIT_TIMEOUT = 10.0

Block = npt.NDArray[np.int16]  # (BLOCK_SAMPLES, 2): s16 stereo


@dataclass(frozen=True)
class RoomFile:
    """What a room recording wrote, once closed."""

    path: Path
    seconds: float  # the recording's length (its last audio block's end)
    video_frames: int
    audio_dropped: int  # audio frames the worker never took (its queue was full)
    audio_late: int  # blocks dropped by a full jitter buffer
    failed: bool


class _Writer:
    """The open file, its encoders and the stamps; used only by the worker thread."""

    def __init__(self, path: Path, size: tuple[int, int], fps: int) -> None:
        fmt = recording_format()
        self.container = open_matroska(path, fmt.container)
        video = self.container.add_stream(fmt.video_codec, rate=fps)
        audio = self.container.add_stream(fmt.audio_codec, rate=AUDIO_RATE)
        if not isinstance(video, av.VideoStream) or not isinstance(audio, av.AudioStream):
            raise MediaError(f"cannot write {fmt.video_codec} and {fmt.audio_codec}")
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        video.codec_context.gop_size = 2 * fps  # a keyframe every 2 s: seeking, a cut file
        if fmt.video_codec == "libx264":
            video.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency"}
        else:
            video.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
            video.codec_context.bit_rate = 2_000_000
        audio.layout = "stereo"
        self.video = video
        self.audio = audio
        self.fps = fps
        self._resampler = av.AudioResampler(
            format=audio.codec_context.format.name, layout="stereo", rate=AUDIO_RATE
        )
        self._audio_pts = 0

    def write_video(self, image: npt.NDArray[np.uint8], index: int) -> None:
        """The BGR ``image`` as frame ``index`` (pts in 1/fps)."""
        yuv = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), np.uint8)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts, frame.time_base = index, Fraction(1, self.fps)
        self.container.mux(self.video.encode(frame))

    def write_audio(self, block: Block) -> None:
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        for chunk in self._resampler.resample(frame):
            chunk.pts, chunk.time_base = self._audio_pts, _AUDIO_TIME_BASE
            self._audio_pts += chunk.samples
            self.container.mux(self.audio.encode(chunk))

    def close(self) -> None:
        close_matroska(self.container, (self.video, self.audio))


class RoomRecorder(FrameConsumer):
    """A FrameConsumer writing the room (mosaic and mixed audio) to one Matroska file.

    The recording starts when the recorder is made (the file opens at once: an unwritable
    path raises ``MediaError`` here) and ends at :meth:`close`; until peers send, the
    picture says "waiting for peers" and the audio is silence. ``size`` (even width and
    height) and ``fps`` are the file's.
    """

    def __init__(self, path: Path, *, size: tuple[int, int] = (1280, 720), fps: int = 15) -> None:
        width, height = size
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise MediaError(f"the room's size must be even and positive, got {width}x{height}")
        if fps <= 0:
            raise MediaError(f"the room's frame rate must be positive, got {fps}")
        self.path = path
        self.size = size
        self.fps = fps
        self.mosaic = Mosaic(tile=size)
        self.mix = AudioMix()
        self.video_frames = 0
        self.audio_dropped = 0
        self.failed = False
        self._audio: queue.Queue[tuple[RemoteTrack, av.AudioFrame]] = queue.Queue(_AUDIO_QUEUE)
        # Track ends and departures, for the worker; one per track or peer at most at a time.
        self._control: collections.deque[RemoteTrack | PeerId] = collections.deque()
        self._resamplers: dict[RemoteTrack, av.AudioResampler] = {}
        self._stop = threading.Event()
        self._closed = False
        self._result: RoomFile | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = _Writer(path, size, fps)
        except (OSError, av.FFmpegError) as exc:
            raise MediaError(f"cannot write the room recording {path}: {exc}") from exc
        self._started = time.monotonic()
        self._seconds = 0.0
        self._thread = threading.Thread(
            target=self._run, args=(writer,), name=f"room recorder {path.name}", daemon=True
        )
        self._thread.start()
        atexit.register(self._finish_at_exit)
        log.info("recording the room to %s (%dx%d at %d fps)", path, width, height, fps)

    # --- FrameConsumer, on the event loop ------------------------------------------------

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        """Video: the tile's newest frame (a reference). Audio: queued for the mix, or
        dropped and counted when the worker is that far behind."""
        if self._closed:
            return
        self.mosaic.put_frame(track, frame)
        if isinstance(frame, av.AudioFrame):
            try:
                self._audio.put_nowait((track, frame))
            except queue.Full:
                self.audio_dropped += 1
                if self.audio_dropped == 1 or self.audio_dropped % 500 == 0:
                    log.warning(
                        "room recorder is behind: %d audio frames dropped", self.audio_dropped
                    )

    def track_ended(self, track: RemoteTrack) -> None:
        self.mosaic.track_ended(track)
        if track.kind == "audio" and not self._closed:
            self._control.append(track)

    async def peer_closed(self, peer: PeerId, *, gone: bool) -> None:
        """A peer gone from the room: its tiles go from the next frame, its voice at once."""
        if gone:
            self.mosaic.remove_peer(peer)
            if not self._closed:
                self._control.append(peer)

    # --- the end -------------------------------------------------------------------------

    @property
    def seconds(self) -> float:
        """The length written so far."""
        return self._seconds

    async def close(self) -> RoomFile:
        """Writes the end of the file (up to now) and closes it; later frames are ignored."""
        self._closed = True
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        atexit.unregister(self._finish_at_exit)
        return self._summary()

    def _summary(self) -> RoomFile:
        return RoomFile(
            self.path,
            self._seconds,
            self.video_frames,
            self.audio_dropped,
            self.mix.late,
            self.failed,
        )

    def _finish_at_exit(self) -> None:
        """Interpreter exit without close() (Ctrl-C past the agent's shutdown): still end
        the file properly."""
        self._closed = True
        self._stop.set()
        self._thread.join(_FINISH_AT_EXIT_TIMEOUT)

    # --- worker thread -------------------------------------------------------------------

    def _run(self, writer: _Writer) -> None:
        try:
            self._record(writer)
        except Exception:
            self.failed = True
            log.exception("recording the room to %s failed", self.path)
        finally:
            try:
                writer.close()
            except Exception:
                self.failed = True
                log.exception("finalising %s failed", self.path)
            log.info(
                "room recording %s: %.1f s, %d frames, audio dropped %d, late %d, underruns %d",
                self.path,
                self._seconds,
                self.video_frames,
                self.audio_dropped,
                self.mix.late,
                self.mix.underruns,
            )

    def _record(self, writer: _Writer) -> None:
        start = self._started
        clock = FrameClock(self.fps, self.fps, max_lag=1.0)  # pts in frames
        tick = clock.next(start)
        blocks = 0
        while True:
            stopping = self._stop.is_set()
            now = time.monotonic()
            self._take_audio()
            # Every block due by now, back to back: the audio never skips, so the file is
            # exactly as long as the recording.
            while start + (blocks + 1) * BLOCK_SECONDS <= now:
                writer.write_audio(self.mix.mix())
                blocks += 1
                self._seconds = blocks * BLOCK_SECONDS
            if stopping:
                return
            if tick.due <= now:
                writer.write_video(self._picture(), tick.pts)
                self.video_frames += 1
                tick = clock.next(time.monotonic())
            next_block = start + (blocks + 1) * BLOCK_SECONDS
            self._stop.wait(max(0.0, min(tick.due, next_block) - time.monotonic()))

    def _picture(self) -> npt.NDArray[np.uint8]:
        """The mosaic at exactly the file's size: tiles sized for the grid of the moment."""
        width, height = self.size
        columns, rows = grid(len(self.mosaic.labels()))
        self.mosaic.tile = (width // columns, height // rows)
        image = self.mosaic.render()
        if image.shape[:2] == (height, width):
            return image
        canvas = np.zeros((height, width, 3), np.uint8)  # a tile came or went meanwhile
        part = image[:height, :width]
        canvas[: part.shape[0], : part.shape[1]] = part
        return canvas

    def _take_audio(self) -> None:
        while True:
            try:
                track, frame = self._audio.get_nowait()
            except queue.Empty:
                break
            resampler = self._resamplers.get(track)
            if resampler is None and not is_native(frame):
                resampler = self._resamplers[track] = av.AudioResampler(
                    format="s16", layout="stereo", rate=AUDIO_RATE
                )
            try:
                self.mix.push(track, to_samples(frame, resampler))
            except (av.FFmpegError, ValueError, MediaError) as exc:
                log.warning("room recorder: audio of %r left out: %s", track, exc)
        while self._control:
            item = self._control.popleft()
            if isinstance(item, RemoteTrack):
                self.mix.end(item)
                self._resamplers.pop(item, None)
            else:
                self.mix.forget(item)
                self._resamplers = {t: r for t, r in self._resamplers.items() if t.peer != item}
