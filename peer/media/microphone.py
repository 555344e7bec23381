"""``--audio mic[:DEVICE]``: the system's microphone as an audio track (``sounddevice``).

PortAudio calls back with each 20 ms block at 48 kHz on its own thread; the block is made
s16 stereo there and handed to the loop. The track is paced by the sound card, not by a
timer: a card whose clock runs a little fast or slow sends a little more or less, and the
receiving side's jitter buffer follows it (a timer here would let the two clocks drift apart
in a buffer on this side, delay growing by the minute). Blocks the loop has not taken are
bounded (``_BACKLOG``): the oldest are dropped and counted.

Echo: a person whose speaker and microphone are both open is heard back by the others unless
something cancels the echo. :class:`EchoCanceller` is the seam for one: given to the
microphone and to the speaker (:mod:`peer.media.speaker`), it sees every block played and
every block captured before it is encoded. No canceller ships (README: use headphones).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.media.devices import Direction, opening, portaudio
from peer.media.errors import MediaSourceError
from peer.media.synthetic import AUDIO_FRAME_SAMPLES, AUDIO_RATE, audio_frame

__all__ = ["EchoCanceller", "MicrophoneTrack", "open_microphone"]

log = logging.getLogger(__name__)

_BACKLOG = 10  # 20 ms blocks captured and not yet sent (200 ms), the oldest dropped

Block = npt.NDArray[np.int16]  # (960, 2) s16 stereo at 48 kHz


class EchoCanceller(Protocol):
    """Removes what the speaker played from what the microphone hears. Both calls come on
    the sound card's threads with 20 ms blocks of s16 stereo at 48 kHz."""

    def played(self, block: Block) -> None:
        """A block the speaker is about to play (the far end's voice)."""

    def captured(self, block: Block) -> Block:
        """A block from the microphone; returns it with the echo removed."""


class MicrophoneTrack(MediaStreamTrack):
    """The microphone's blocks as 20 ms s16 stereo frames; ``stop`` closes the device.

    Counters: ``captured`` (blocks from the card), ``dropped`` (blocks the loop was too late
    to take), ``overflows`` (the card's own reports of lost input).
    """

    kind = "audio"

    def __init__(self, echo: EchoCanceller | None = None) -> None:
        super().__init__()
        self.captured = 0
        self.dropped = 0
        self.overflows = 0
        self._echo = echo
        self._blocks: collections.deque[Block] = collections.deque(maxlen=_BACKLOG)
        self._ready = asyncio.Event()
        self._reader_loop = asyncio.get_running_loop()  # made on the loop that reads it
        self._pts = 0
        self._stream: Any = None

    def _callback(
        self, indata: npt.NDArray[np.int16], frames: int, _time: Any, status: Any
    ) -> None:
        """PortAudio's thread: one block in; never waits for the loop."""
        if status.input_overflow:
            self.overflows += 1
        block: Block = np.repeat(indata[:, :1], 2, axis=1)  # mono doubled: no 3 dB loss
        if self._echo is not None:
            block = self._echo.captured(block)
        if len(self._blocks) == _BACKLOG:
            self.dropped += 1
        self._blocks.append(block)
        self.captured += 1
        with contextlib.suppress(RuntimeError):  # the loop closed under a running stream
            self._reader_loop.call_soon_threadsafe(self._ready.set)

    async def recv(self) -> av.AudioFrame:
        while not self._blocks:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        if self.readyState != "live":
            raise MediaStreamError
        block = self._blocks.popleft()
        frame = audio_frame(block.reshape(1, -1), self._pts)
        self._pts += len(block)
        return frame

    def stop(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.abort()
            stream.close()
            log.info("microphone closed: %d blocks, %d dropped", self.captured, self.dropped)
        super().stop()
        self._ready.set()  # a waiting recv ends


def open_microphone(device: str = "", echo: EchoCanceller | None = None) -> MicrophoneTrack:
    """Opens the input ``device`` (empty: the default) at 48 kHz; on the event loop.
    MediaSourceError, one line, when it is missing or busy."""
    sd = portaudio()
    track = MicrophoneTrack(echo)
    shown = device or "the default input"
    with opening(device, Direction.INPUT) as portaudio_device:
        try:
            stream = sd.InputStream(
                samplerate=AUDIO_RATE,
                blocksize=AUDIO_FRAME_SAMPLES,
                channels=1,
                dtype="int16",
                device=portaudio_device,
                latency="low",
                callback=track._callback,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise MediaSourceError(f"cannot open the microphone {shown}: {exc}") from exc
    track._stream = stream
    log.info("microphone: %s at %d Hz (latency %.0f ms)", shown, AUDIO_RATE, stream.latency * 1e3)
    return track
