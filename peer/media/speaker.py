"""``--speaker[=DEVICE]``: the room through the system's audio output (``sounddevice``).

A :class:`Speaker` is a frame consumer: the event loop hands it each remote audio frame,
which goes into the room's :class:`peer.media.audio_mix.AudioMix` (a jitter buffer per
track) under a lock. The sound card's thread takes one mixed 20 ms block per callback, so
the card sets the pace, and the mix follows each sender's clock (``follow``): each track's
buffer is held at its prebuffer by taking a few samples more or fewer per block, and the
delay from mouth to ear stays what it was at the start of the call, an hour later too.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from peer.events import RemoteTrack
from peer.media.audio_mix import AUDIO_RATE, AudioMix, is_native, to_samples
from peer.media.devices import Direction, open_stream
from peer.media.errors import MediaError
from peer.media.microphone import EchoCanceller
from peer.media.tap import FrameConsumer
from signaling.protocol import PeerId

__all__ = ["Speaker", "open_speaker"]

log = logging.getLogger(__name__)

#: The prebuffer each track starts with and is held at (40 ms, on top of aiortc's own
#: buffer), and the most it may hold: 60 ms more, so that time lost at once (the card ran
#: dry while this process was starved, a burst after a network stall) costs at most that
#: much delay and is dropped rather than followed away at 0.5% for minutes.
_PREBUFFER = 2
_CAPACITY = 5


class Speaker(FrameConsumer):
    """Plays every remote audio track, mixed, until :meth:`close`.

    Counters: ``played`` (blocks given to the card), ``card_underflows`` (the card's own
    reports of running dry: the callback was late), and the mix's ``late``, ``underruns``,
    ``stretched`` and ``skipped``.
    """

    def __init__(self, echo: EchoCanceller | None = None) -> None:
        self.mix = AudioMix(capacity=_CAPACITY, prebuffer=_PREBUFFER, follow=True)
        self.frame_kinds = frozenset({"audio"})  # no picture is decoded for the speaker
        self.played = 0
        self.card_underflows = 0
        self._echo = echo
        self._lock = threading.Lock()  # the mix, shared by the loop and the card's thread
        self._resamplers: dict[RemoteTrack, av.AudioResampler] = {}
        self._stream: Any = None

    # --- FrameConsumer, on the event loop ------------------------------------------------

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        if not isinstance(frame, av.AudioFrame):
            return
        resampler = self._resamplers.get(track)
        if resampler is None and not is_native(frame):
            resampler = self._resamplers[track] = av.AudioResampler(
                format="s16", layout="stereo", rate=AUDIO_RATE
            )
        try:
            samples = to_samples(frame, resampler)
        except (av.FFmpegError, ValueError, MediaError) as exc:
            log.warning("speaker: audio of %r left out: %s", track, exc)
            return
        with self._lock:
            self.mix.push(track, samples)

    def track_ended(self, track: RemoteTrack) -> None:
        if track.kind == "audio":
            with self._lock:
                self.mix.end(track)
            self._resamplers.pop(track, None)

    async def peer_closed(self, peer: PeerId, *, gone: bool) -> None:
        if gone:
            with self._lock:
                self.mix.forget(peer)
            self._resamplers = {t: r for t, r in self._resamplers.items() if t.peer != peer}

    def buffered(self) -> dict[RemoteTrack, int]:
        """Samples each track holds now (what ``follow`` keeps at the prebuffer)."""
        with self._lock:
            return {track: self.mix.buffered(track) for track in self.mix.tracks()}

    # --- the sound card's thread ---------------------------------------------------------

    def _callback(
        self, outdata: npt.NDArray[np.int16], _frames: int, _time: Any, status: Any
    ) -> None:
        if status.output_underflow:
            self.card_underflows += 1
        with self._lock:
            block = self.mix.mix()
        if self._echo is not None:
            self._echo.played(block)
        outdata[:] = block
        self.played += 1

    def close(self) -> None:
        """Stops playing (idempotent); frames that come later are mixed for nobody."""
        if self._stream is None:
            return
        stream, self._stream = self._stream, None
        stream.abort()
        stream.close()
        log.info(
            "speaker closed: %d blocks played, card underflows %d, late %d, underruns %d, "
            "stretched %d, skipped %d",
            self.played,
            self.card_underflows,
            self.mix.late,
            self.mix.underruns,
            self.mix.stretched,
            self.mix.skipped,
        )


def open_speaker(device: str = "", echo: EchoCanceller | None = None) -> Speaker:
    """Opens the output ``device`` (empty: the default) at 48 kHz stereo and starts playing
    (silence until someone speaks). MediaSourceError, one line, when it is missing or busy."""
    speaker = Speaker(echo)
    speaker._stream = open_stream(device, Direction.OUTPUT, speaker._callback)
    return speaker
