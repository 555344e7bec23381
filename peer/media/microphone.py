"""``--audio mic[:DEVICE]``: the system's microphone as an audio track (``sounddevice``).

PortAudio calls back with each 20 ms block at 48 kHz on its own thread; the block is made
s16 stereo there and handed to the loop. The track sends each block as soon as it came,
unless the source posts in bursts (PulseAudio's sine source posts 2 s at once; ``bursty``:
most blocks of the last second came on the heels of the one before). A bursty source's
block goes when it came and its slot (20 ms after the previous one) is due, so the burst
goes out at the pace of speech, and a card that is a little slow sets the pace itself (the
slots restart from the late block). Blocks that waited through a pause in reading, as
before the first peer came, are stale and dropped: all but the newest and the burst it came
in. A burst from a source that is not bursty (the sound server or this process was
starved) is old sound: it goes out at once, and the speaker skips what its buffer gains at
its next quiet moment, instead of all of it being heard late for the rest of the call.
A bursty card that is a little fast leaves a standing backlog: once per window (``_WINDOW``,
5 s) the fewest blocks left waiting in it, less one, are taken away: the quiet ones among
them dropped (a pause in speech shortened, which nobody hears), up to ``_RUSH`` loud ones
sent at once (for the speaker's follower), and a sawtooth (empty just before each burst) is
left alone.
Blocks waiting are bounded (``_BACKLOG``): the oldest are dropped and counted.

Echo: a person whose speaker and microphone are both open is heard back by the others unless
something cancels the echo. :class:`EchoCanceller` is the seam for one: given to the
microphone and to the speaker (:mod:`peer.media.speaker`), it sees every block played and
every block captured before it is encoded. No canceller ships (docs/desktop.md: use headphones).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from peer.media.audio_mix import is_quiet
from peer.media.devices import Direction, open_stream
from peer.media.synthetic import AUDIO_FRAME_SAMPLES, AUDIO_RATE, audio_frame

__all__ = ["EchoCanceller", "MicrophoneTrack", "open_microphone"]

log = logging.getLogger(__name__)

_BACKLOG = 150  # 20 ms blocks captured and not yet sent (3 s), the oldest dropped
_WINDOW = 250  # blocks (5 s) over which the fewest waiting is the standing backlog
_RUSH = 2  # blocks sent at once per window at most: what the speaker's buffer takes
#: Bursty: a block that came within a quarter block of the one before is on its heels; the
#: share of those, smoothed over about a second of blocks, above a half.
_HEELS = 0.005
_BURST_SMOOTHING = 1 / 50
_BLOCK_SECONDS = AUDIO_FRAME_SAMPLES / AUDIO_RATE
_MAX_LAG = 0.1  # a block this late restarts the slots from it

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
    to take), ``skipped`` and ``rushed`` (quiet blocks dropped and loud ones sent early
    against a standing backlog), ``overflows`` (the card's own reports of lost input).
    """

    kind = "audio"

    def __init__(self, echo: EchoCanceller | None = None) -> None:
        super().__init__()
        self.captured = 0
        self.dropped = 0
        self.overflows = 0
        self._echo = echo
        #: (when it came, the block)
        self._blocks: collections.deque[tuple[float, Block]] = collections.deque(maxlen=_BACKLOG)
        self._ready = asyncio.Event()
        self._reader_loop = asyncio.get_running_loop()  # made on the loop that reads it
        self._pts = 0
        self._due: float | None = None  # the next block's slot (monotonic seconds)
        self._sent_in_window = 0
        self._lowest = _BACKLOG  # the fewest blocks left waiting in this window
        self._last_came = 0.0  # when the last block came (PortAudio's thread)
        self._heels = 0.0  # the smoothed share of blocks that came on the heels of one
        self.rushed = 0  # blocks sent ahead of their slot to take a standing backlog away
        self.skipped = 0  # quiet blocks dropped from a standing backlog
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
        now = time.monotonic()
        on_heels = now - self._last_came < _HEELS
        self._heels += _BURST_SMOOTHING * (on_heels - self._heels)
        self._last_came = now
        self._blocks.append((now, block))
        self.captured += 1
        with contextlib.suppress(RuntimeError):  # the loop closed under a running stream
            self._reader_loop.call_soon_threadsafe(self._ready.set)

    async def recv(self) -> av.AudioFrame:
        while not self._blocks:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        now = time.monotonic()
        if self._due is None or now - self._due > _MAX_LAG:
            # First read, or nobody read for a while (no peer yet): what waited is stale,
            # but for the newest block and the burst it came in.
            newest = self._blocks[-1][0]
            while len(self._blocks) > 1 and self._blocks[0][0] < newest - _BLOCK_SECONDS:
                self._blocks.popleft()
                self.dropped += 1
            self._due = now
        elif not self.bursty:
            self._due = min(self._due, now)  # sent as it came: the slots follow
        elif self._due > now:
            await asyncio.sleep(self._due - now)
        if self.readyState != "live" or not self._blocks:
            raise MediaStreamError
        self._due += _BLOCK_SECONDS
        waiting = len(self._blocks) - 1
        self._lowest = min(self._lowest, waiting)
        self._sent_in_window += 1
        if self._sent_in_window >= _WINDOW:
            if self._lowest > 1:
                self._take_standing(self._lowest - 1)
            self._sent_in_window, self._lowest = 0, _BACKLOG
        _, block = self._blocks.popleft()
        frame = audio_frame(block.reshape(1, -1), self._pts)
        self._pts += len(block)
        return frame

    @property
    def bursty(self) -> bool:
        """Whether the source posts in bursts (most blocks came on the heels of another)."""
        return self._heels > 0.5

    def _take_standing(self, standing: int) -> None:
        """Takes ``standing`` blocks out of the wait: quiet ones dropped, loud ones (up to
        ``_RUSH``) sent at once."""
        kept: list[tuple[float, Block]] = []
        while standing and self._blocks:
            came, block = self._blocks.popleft()
            if is_quiet(block):
                self.skipped += 1
                standing -= 1
            else:
                kept.append((came, block))
        self._blocks.extendleft(reversed(kept))
        rushed = min(standing, _RUSH)
        self._due = (self._due or 0.0) - rushed * _BLOCK_SECONDS  # those go out at once
        self.rushed += rushed

    def stop(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.abort()
            stream.close()
            log.info(
                "microphone closed: %d blocks, %d dropped, %d skipped, %d rushed",
                self.captured,
                self.dropped,
                self.skipped,
                self.rushed,
            )
        super().stop()
        self._ready.set()  # a waiting recv ends


def open_microphone(device: str = "", echo: EchoCanceller | None = None) -> MicrophoneTrack:
    """Opens the input ``device`` (empty: the default) at 48 kHz; on the event loop.
    MediaSourceError, one line, when it is missing or busy."""
    track = MicrophoneTrack(echo)
    track._stream = open_stream(device, Direction.INPUT, track._callback)
    return track
