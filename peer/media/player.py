"""A file, URL or camera played as aiortc tracks, decoded in a worker thread.

Written instead of aiortc's ``MediaPlayer`` because that one restarts video pts at 0 when
it loops (non-monotonic timestamps), hands out frames in whatever format the decoder
produced (encoders sharing them through ``MediaRelay`` then convert the same frame at
once, which crashed the process), and queues frames without bound.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Iterator

import av
import av.container
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.media.errors import MediaSourceError
from peer.media.synthetic import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_RATE,
    AUDIO_TIME_BASE,
    VIDEO_CLOCK_RATE,
    VIDEO_TIME_BASE,
)

log = logging.getLogger(__name__)

_VIDEO_BUFFER = 8  # frames; a consumer that falls behind loses the oldest
_AUDIO_BUFFER = 25  # 0.5 s of 20 ms frames
_ASSUMED_FPS = 30


class PlayerTrack(MediaStreamTrack):
    """One kind of a ``Player``'s output, buffered in a small drop-oldest queue."""

    def __init__(self, player: Player, kind: str, depth: int) -> None:
        super().__init__()
        self.kind = kind
        self._player = player
        self._frames: collections.deque[av.VideoFrame | av.AudioFrame] = collections.deque(
            maxlen=depth
        )
        self._ready = asyncio.Event()
        self._finished = False

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._player.start(asyncio.get_running_loop())
        while not self._frames:
            if self._finished or self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def stop(self) -> None:
        super().stop()
        self._ready.set()
        self._player.track_stopped()

    def _deliver(self, frame: av.VideoFrame | av.AudioFrame | None) -> None:
        """Runs on the event loop; ``None`` means the media ended."""
        if frame is None:
            self._finished = True
        else:
            self._frames.append(frame)
        self._ready.set()


class Player:
    """Decodes one container in a thread and paces its frames in real time.

    ``loop=True`` seeks back to the start at the end (files); ``live=True`` means the
    source paces itself (cameras, live URLs) so no sleeping is done. Timestamps are
    rebased onto one timeline that keeps increasing across loops.
    """

    def __init__(
        self,
        url: str,
        *,
        want_video: bool,
        want_audio: bool,
        loop: bool,
        live: bool = False,
        input_format: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self._loop_playback = loop
        self._live = live
        self._input_format = input_format
        self._options = options or {}
        self._container = self._open()
        has_video = bool(self._container.streams.video)
        has_audio = bool(self._container.streams.audio)
        if want_video and not has_video:
            self._container.close()
            raise MediaSourceError(f"{url!r} has no video stream")
        if want_audio and not has_audio:
            self._container.close()
            raise MediaSourceError(f"{url!r} has no audio stream")
        self.video = PlayerTrack(self, "video", _VIDEO_BUFFER) if want_video else None
        self.audio = PlayerTrack(self, "audio", _AUDIO_BUFFER) if want_audio else None
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(self.url, "r", format=self._input_format, options=self._options)
        except (av.FFmpegError, OSError) as exc:
            raise MediaSourceError(f"cannot open {self.url!r}: {exc}") from exc

    def start(self, event_loop: asyncio.AbstractEventLoop) -> None:
        """Starts decoding on the first ``recv`` (the loop is known only then)."""
        if self._thread is not None or self._quit.is_set():
            return
        self._event_loop = event_loop
        self._thread = threading.Thread(target=self._run, name=f"player {self.url}", daemon=True)
        self._thread.start()

    def track_stopped(self) -> None:
        tracks = [t for t in (self.video, self.audio) if t is not None]
        if all(t.readyState == "ended" for t in tracks):
            self.stop()

    def stop(self) -> None:
        already = self._quit.is_set()
        self._quit.set()
        if self._thread is None and not already:
            self._container.close()  # else the thread closes it on its way out
        for track in (self.video, self.audio):
            if track is not None and track.readyState == "live":
                track.stop()

    # --- the worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        log.info("playing %s", self.url)
        try:
            self._play()
        except Exception:
            log.exception("player %s failed", self.url)
        finally:
            self._container.close()
            self._send(self.video, None)
            self._send(self.audio, None)
            log.info("player %s stopped", self.url)

    def _play(self) -> None:
        wall_start = time.monotonic()
        offset = 0.0  # where the current pass starts on the output timeline, in seconds
        pass_end = 0.0
        last_video_pts = -1
        audio_next = 0
        resampler = av.AudioResampler(
            format="s16", layout="stereo", rate=AUDIO_RATE, frame_size=AUDIO_FRAME_SAMPLES
        )
        while not self._quit.is_set():
            first: float | None = None
            for frame in self._frames():
                if self._quit.is_set():
                    return
                if frame.time is None:
                    continue
                if first is None:
                    first = frame.time
                t = offset + frame.time - first
                if not self._live and not self._wait_until(wall_start + t):
                    return
                if isinstance(frame, av.VideoFrame) and self.video is not None:
                    out = frame.reformat(format="yuv420p")  # our own decoded frame: safe
                    pts = max(round(t * VIDEO_CLOCK_RATE), last_video_pts + 1)
                    out.pts, out.time_base, last_video_pts = pts, VIDEO_TIME_BASE, pts
                    pass_end = max(pass_end, t + self._frame_period())
                    self._send(self.video, out)
                elif isinstance(frame, av.AudioFrame) and self.audio is not None:
                    for chunk in resampler.resample(frame):
                        chunk.pts, chunk.time_base = audio_next, AUDIO_TIME_BASE
                        audio_next += chunk.samples
                        self._send(self.audio, chunk)
                    pass_end = max(pass_end, t + frame.samples / frame.sample_rate)
            if not self._loop_playback or first is None:
                return
            offset = pass_end
            audio_next = max(audio_next, round(offset * AUDIO_RATE))
            self._rewind()

    def _frames(self) -> Iterator[av.VideoFrame | av.AudioFrame]:
        streams: list[av.VideoStream | av.AudioStream] = []
        if self.video is not None:
            streams.append(self._container.streams.video[0])
        if self.audio is not None:
            streams.append(self._container.streams.audio[0])
        for frame in self._container.decode(*streams):
            if isinstance(frame, av.VideoFrame | av.AudioFrame):
                yield frame

    def _frame_period(self) -> float:
        rate = self._container.streams.video[0].average_rate
        return 1 / float(rate) if rate else 1 / _ASSUMED_FPS

    def _rewind(self) -> None:
        try:
            self._container.seek(0)
        except av.FFmpegError:
            log.debug("cannot seek %s, reopening it to loop", self.url)
            self._container.close()
            self._container = self._open()

    def _wait_until(self, due: float) -> bool:
        """Sleeps until ``due``; False when asked to quit meanwhile."""
        delay = due - time.monotonic()
        return not (delay > 0 and self._quit.wait(delay))

    def _send(self, track: PlayerTrack | None, frame: av.VideoFrame | av.AudioFrame | None) -> None:
        if track is None or self._event_loop is None:
            return
        try:
            self._event_loop.call_soon_threadsafe(track._deliver, frame)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self._quit.set()
