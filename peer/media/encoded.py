"""A remote track's encoded frames to the packet consumers, and its decoder fed on demand.

aiortc decodes every remote track on a thread of its own, whether anyone looks at the
pictures or not (about 5% of a core per 640x480@30 video). An :class:`EncodedTap` takes
the receiver's depacketized frames before the decoder (:func:`peer._aiortc.feed_decoder`),
hands each to the agent's :class:`peer.media.tap.Sinks` as an
:class:`peer.media.packets.EncodedFrame`, and passes it on to the decoder only while a
consumer wants decoded frames (``Sinks.wants_frames``) or someone reads a copy of the
decoded track (:meth:`EncodedTap.reader`). Decoding that starts mid-stream starts at a
keyframe, asked for with a PLI; the decoder's backlog is bounded (a decoder that falls
behind skips to the next keyframe), and so are the decoded frames waiting for the track's
reader (past ``DECODED_WAITING`` they are dropped: FFmpeg keeps as many picture buffers as
were ever alive at once, for good). Audio follows the same rule without the keyframes:
Opus frames decode alone, so an idle Opus decoder resumes at any frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from peer._aiortc import (
    bound_decoded,
    feed_decoder,
    media_ssrcs,
    pass_audio_through,
    rtp_origin,
    watch_pli,
    watch_sender_reports,
)
from peer.events import RemoteTrack
from peer.media.packets import EncodedFrame, is_keyframe
from peer.media.tap import FpsMeter, Sinks
from peer.media.timeline import SenderClock

log = logging.getLogger(__name__)

#: Frames waiting for the decoder at most; past it the decoder skips to a keyframe.
DECODE_BACKLOG = 30
#: Decoded frames waiting for the track's reader at most (about 0.25 s of video at 15 fps,
#: 0.5 s of audio); more are dropped. A loop held up longer would otherwise leave the
#: decoder's picture pool that much larger for the rest of the run (the soak's creep).
DECODED_WAITING = {"video": 4, "audio": 25}
#: A keyframe is asked for again after this long without one (a PLI may be lost).
KEYFRAME_RETRY = 0.5


class EncodedTap:
    """``remote``'s encoded frames from ``receiver`` to ``sinks``; decoded on demand."""

    def __init__(
        self,
        remote: RemoteTrack,
        receiver: RTCRtpReceiver,
        sinks: Sinks,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.remote = remote
        self.kind = remote.kind
        self.receiver = receiver
        #: Encoded frames received, keyframes among them, frames skipped by the decoder.
        self.frames = 0
        self.keyframes = 0
        self.skipped = 0
        #: PLIs we sent; losses the receiver could not repair (it sent a PLI itself).
        self.keyframe_requests = 0
        self.losses = 0
        self.first_frame_at: float | None = None
        #: Whether frames go to the decoder now.
        self.decoding = False
        self._sinks = sinks
        self._clock = clock
        self._meter = FpsMeter()
        self._readers = 0  # copies of the decoded track being read (reader())
        self._await_keyframe = False  # the decoder waits for a keyframe
        self._last_request = -KEYFRAME_RETRY
        self._requests: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._feed = feed_decoder(receiver, self._on_frame, self._on_stop)
        self._decoded = bound_decoded(receiver, DECODED_WAITING[self.kind])
        if self.kind == "audio":  # each Opus packet on as it comes (aiortc holds 80 ms)
            pass_audio_through(receiver)
        self._send_pli = watch_pli(receiver, self._on_loss)
        #: The sender's wall clock for this track (lip sync), also ``remote.sender_clock``.
        self.sender_clock = remote.sender_clock = SenderClock()
        watch_sender_reports(receiver, self.sender_clock.report)

    @property
    def decoded_dropped(self) -> int:
        """Decoded frames dropped because ``DECODED_WAITING`` waited for the reader."""
        return self._decoded.dropped

    @property
    def fps(self) -> float:
        """Encoded frames per second received, over the last seconds."""
        return self._meter.rate(self._clock())

    def reader(self, copy: MediaStreamTrack) -> MediaStreamTrack:
        """Count ``copy`` (a relay copy of the decoded track) as a reader until it stops:
        the track is decoded while it lives."""
        self._readers += 1

        def ended() -> None:
            self._readers -= 1

        copy.once("ended", ended)
        return copy

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe now (video only)."""
        if self.kind != "video" or self._stopped:
            return
        self._last_request = self._clock()
        self.keyframe_requests += 1
        task = asyncio.get_running_loop().create_task(self._pli())
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    def stop(self) -> None:
        """No more keyframe requests (the receiver stops the frames itself)."""
        self._stopped = True
        for task in list(self._requests):
            task.cancel()

    async def _pli(self) -> None:
        for ssrc in media_ssrcs(self.receiver)[:1]:
            try:
                await self._send_pli(ssrc)
            except Exception as exc:  # a closing transport
                log.debug("PLI for %r not sent: %r", self.remote, exc)

    # -- from aiortc's receiver, on the event loop ----------------------------------------

    def _on_frame(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        now = self._clock()
        packet = EncodedFrame(
            codec.name,
            frame.data,
            frame.timestamp,
            codec.clockRate,
            is_keyframe(codec.name, frame.data),
            now,
        )
        self.frames += 1
        self.keyframes += packet.keyframe
        if self.first_frame_at is None:
            self.first_frame_at = now
            origin = rtp_origin(self.receiver)
            if origin is not None:
                self.sender_clock.anchor(origin, codec.clockRate)
        self._meter.tick(now)
        wants_keyframe = self._sinks.put_packet(self.remote, packet)
        if self._decode(packet):
            self._feed.decode(codec, frame)
        elif self._await_keyframe:
            wants_keyframe = True
        if wants_keyframe and now - self._last_request >= KEYFRAME_RETRY:
            self.request_keyframe()

    def _decode(self, packet: EncodedFrame) -> bool:
        """Whether ``packet`` goes to the decoder (and the decoder's state with it)."""
        wanted = self._readers > 0 or self._sinks.wants_frames_of(self.kind)
        if wanted != self.decoding:
            self.decoding = wanted
            self._await_keyframe = wanted and self.kind == "video"
            log.info("%r: decoding %s", self.remote, "started" if wanted else "stopped")
        if not wanted:
            return False
        if self._await_keyframe:
            if not packet.keyframe:
                return False
            self._await_keyframe = False
        if self._feed.backlog >= DECODE_BACKLOG:
            self.skipped += 1
            self._await_keyframe = self.kind == "video"
            return False
        return True

    def _on_loss(self) -> None:
        """The receiver dropped frames it could not complete and asked for a keyframe."""
        self.losses += 1
        self._last_request = self._clock()
        self._sinks.resync(self.remote)

    def _on_stop(self) -> None:
        self.stop()
