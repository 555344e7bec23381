"""Every private aiortc and aioice field or method meshpeer touches, each behind one name.

aiortc 1.16 and aioice 0.13 offer no public way to do these; an upgrade that moves one of
them breaks a function here, and tests/peer/test_aiortc_internals.py, which pins exactly
these assumptions between two real connections, fails by name. Nothing else in ``peer``
reaches into aiortc's privates.

- Shared encoding (:mod:`peer.media.fanout`): a transceiver's negotiated codecs, the
  sender's keyframe hook (PLI/FIR) and its encoder slot (packets packed, REMB set there).
- Inbound stats (:mod:`peer.link`): a receiver's per-SSRC counters and which SSRCs are
  retransmissions (getStats gives them all one id), and ICE's nominated pair.
- mDNS (:mod:`peer.link`): aioice's per-process responder, bound to one event loop.
- NACKs asked again (:mod:`peer.nack`): the receiver's NACK generator and NACK sender.
- Encoded frames and decoding on demand (:mod:`peer.media.encoded`): the receiver's
  decoder queue (``feed_decoder``), the remote track's queue of decoded frames
  (``bound_decoded``), its PLI sender (``watch_pli``) and its media SSRCs.
- Lip sync (:mod:`peer.media.encoded`): the RTCP sender reports a receiver gets
  (``watch_sender_reports``) and where aiortc's RTP timestamp mapping starts
  (``rtp_origin``).
- Audio delay (:mod:`peer.media.encoded`): an audio receiver's jitter buffer, replaced by
  one that hands every Opus packet on at once (``pass_audio_through``).
- The receive path's per-packet cost (:mod:`peer.link`): aiortc's clock and bandwidth
  estimator, aioice's datagram demultiplexing and its queue of received datagrams, made
  cheaper with the same results (``lighten_receive_path``).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aioice import ice as aioice_ice
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver, clock, rate
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtcpSrPacket, RtpPacket

__all__ = [
    "AudioPassThrough",
    "DatagramQueue",
    "DecodedFrames",
    "DecoderFeed",
    "InboundCounts",
    "bound_decoded",
    "encoder_slot",
    "feed_decoder",
    "inbound_counts",
    "lighten_receive_path",
    "mdns_on_this_loop",
    "media_ssrcs",
    "nack_generator",
    "negotiated_codecs",
    "nominated_route",
    "on_keyframe_request",
    "pass_audio_through",
    "put_encoder",
    "replace_nack_sender",
    "rtp_origin",
    "watch_pli",
    "watch_sender_reports",
]

log = logging.getLogger(__name__)

#: ``RTCRtpReceiver._send_rtcp_nack``'s shape: (media SSRC, lost sequence numbers).
NackSender = Callable[[int, list[int]], Awaitable[None]]
#: ``RTCRtpReceiver._send_rtcp_pli``'s shape: (media SSRC).
PliSender = Callable[[int], Awaitable[None]]


# -- shared encoding (peer.media.fanout) -------------------------------------------------


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs negotiated for ``transceiver``, preferred first (empty before the answer)."""
    return transceiver._codecs


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call ``callback`` on each PLI/FIR for ``sender`` instead of flagging its own encoder
    (unused on the pack path)."""
    sender._send_keyframe = callback  # type: ignore[method-assign]


def put_encoder(sender: RTCRtpSender, encoder: object) -> None:
    """Put ``encoder`` in ``sender``'s private encoder slot: aiortc packs packets with it
    (``pack``) and sets REMB estimates on it (``target_bitrate``)."""
    sender._RTCRtpSender__encoder = encoder  # type: ignore[attr-defined]


def encoder_slot(sender: RTCRtpSender) -> object:
    """What ``sender``'s private encoder slot holds now (None before its first frame)."""
    slot: object = getattr(sender, "_RTCRtpSender__encoder", None)
    return slot


# -- inbound stats and route (peer.link) ------------------------------------------------


@dataclass(frozen=True)
class InboundCounts:
    """RTP packets of a receiver's media streams, retransmission streams left out."""

    received: int
    lost: int


def inbound_counts(receiver: RTCRtpReceiver) -> InboundCounts | None:
    """``receiver``'s media packets received and lost; None if aiortc's fields moved.

    aiortc's getStats gives every stream of one receiver the same id, so once
    retransmissions flow its report keeps the RTX stream's counts instead of the media's.
    """
    streams: Mapping[int, Any] | None = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
    rtx: Mapping[int, int] | None = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", None)
    if streams is None or rtx is None:
        return None
    received = lost = 0
    for ssrc, stream in streams.items():
        if ssrc not in rtx:
            received += stream.packets_received
            lost += max(0, stream.packets_lost)
    return InboundCounts(received, lost)


def nominated_route(transceiver: RTCRtpTransceiver) -> str | None:
    """``"<local>-<remote>"`` candidate types of the ICE pair nominated under
    ``transceiver``'s transport (``RTCIceTransport._connection._nominated``), or None."""
    dtls = transceiver.sender.transport or transceiver.receiver.transport
    connection = getattr(getattr(dtls, "transport", None), "_connection", None)
    nominated = getattr(connection, "_nominated", None) or {}
    for pair in nominated.values():
        return f"{pair.local_candidate.type}-{pair.remote_candidate.type}"
    return None


# -- mDNS (peer.link) --------------------------------------------------------------------


def mdns_on_this_loop() -> None:
    """Give aioice a fresh mDNS responder when the event loop is not the one it made it on.

    aioice keeps one responder per process (``aioice.ice._mdns``: a lock, a socket, its
    users), bound to the loop that first resolved a name. On a second loop in the same
    process (``asyncio.run`` twice, a bot's pytest-asyncio tests) every resolution failed
    with "bound to a different event loop".
    """
    state = aioice_ice._mdns
    loop = asyncio.get_running_loop()
    if getattr(state, "loop", loop) is not loop:
        for name in ("lock", "protocol", "subscribers"):
            state.__dict__.pop(name, None)
    state.loop = loop


# -- NACKs (peer.nack) -------------------------------------------------------------------


def nack_generator(receiver: RTCRtpReceiver) -> Any | None:
    """``receiver``'s NACK generator (its ``missing`` set of sequence numbers), or None
    (an audio receiver has none)."""
    return getattr(receiver, "_RTCRtpReceiver__nack_generator", None)


def replace_nack_sender(receiver: RTCRtpReceiver, replacement: NackSender) -> NackSender:
    """Have ``receiver`` send its NACKs through ``replacement``; return its own sender."""
    original: NackSender = receiver._send_rtcp_nack
    receiver._send_rtcp_nack = replacement  # type: ignore[method-assign,assignment]
    return original


# -- encoded frames, decoding on demand (peer.media.encoded) -----------------------------


class DecoderFeed:
    """Stands in a receiver's private decoder queue (``__decoder_queue``).

    aiortc's ``_handle_rtp_packet`` puts each depacketized frame there as ``(codec,
    JitterFrame)``, on the event loop, in the jitter buffer's order; its decoder thread
    (``decoder_worker``) takes them with ``get()``, and ``put(None)`` (the receiver
    stopping, a BYE, a disconnect) ends the thread and then the track. Here each frame goes
    to ``on_frame`` instead; only what :meth:`decode` is given reaches the decoder.
    ``None`` still goes through, after ``on_stop``.
    """

    def __init__(
        self,
        decoder_queue: queue.Queue[Any],
        on_frame: Callable[[RTCRtpCodecParameters, JitterFrame], None],
        on_stop: Callable[[], None],
    ) -> None:
        self._queue = decoder_queue
        self._on_frame = on_frame
        self._on_stop = on_stop

    @property
    def backlog(self) -> int:
        """Frames given to the decoder and not yet taken by it."""
        return self._queue.qsize()

    def decode(self, codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        """Have the receiver's decoder thread decode ``frame`` (into the remote track)."""
        self._queue.put((codec, frame))

    # -- the queue aiortc sees -------------------------------------------------------

    def put(self, item: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if item is None:
            self._on_stop()
            self._queue.put(None)
        else:
            self._on_frame(*item)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The decoder thread's read (it reads this object when it started after
        :func:`feed_decoder`, the original queue otherwise: the same items)."""
        return self._queue.get(block, timeout)


def feed_decoder(
    receiver: RTCRtpReceiver,
    on_frame: Callable[[RTCRtpCodecParameters, JitterFrame], None],
    on_stop: Callable[[], None],
) -> DecoderFeed:
    """Take ``receiver``'s encoded frames (see :class:`DecoderFeed`): from now on they go
    to ``on_frame`` and are decoded only when given to :meth:`DecoderFeed.decode`."""
    name = "_RTCRtpReceiver__decoder_queue"
    original = getattr(receiver, name)
    if isinstance(original, DecoderFeed):
        raise ValueError(f"{receiver!r} already feeds its decoder through meshpeer")
    feed = DecoderFeed(original, on_frame, on_stop)
    setattr(receiver, name, feed)
    return feed


class DecodedFrames:
    """Bounds a remote track's private queue of decoded frames (``RemoteStreamTrack._queue``).

    aiortc's decoder thread hands each frame to the event loop with
    ``run_coroutine_threadsafe(queue.put(frame))``: a frame waits in the loop's callbacks,
    then in that queue, until the track's reader takes it, without bound. FFmpeg's decoder
    keeps a pool of picture buffers as large as the most frames ever alive at once and never
    shrinks it, so each stall of the loop (the decoder catches up on its backlog while the
    loop is held up) left the process larger for good: the sending bots' creep in the soak.
    Here ``put``, called on the decoder thread, drops a frame when ``limit`` are waiting
    (given to the loop, not yet read); ``None`` (the end) always goes through.
    """

    def __init__(self, frames: asyncio.Queue[Any], limit: int) -> None:
        self.limit = limit
        #: Decoded frames dropped because ``limit`` were waiting.
        self.dropped = 0
        self._put = frames.put
        self._get = frames.get
        self._lock = threading.Lock()  # the decoder thread puts, the loop gets
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Frames the decoder handed on that the track's reader has not taken yet."""
        return self._waiting

    def put(self, frame: Any) -> Awaitable[None]:
        """On the decoder thread: what it hands to ``run_coroutine_threadsafe``."""
        if frame is not None:
            with self._lock:
                if self._waiting >= self.limit:
                    self.dropped += 1
                    return _nothing()
                self._waiting += 1
        return self._put(frame)

    async def get(self) -> Any:
        frame = await self._get()
        if frame is not None:
            with self._lock:
                self._waiting -= 1
        return frame


async def _nothing() -> None:
    return None


def bound_decoded(receiver: RTCRtpReceiver, limit: int) -> DecodedFrames:
    """At most ``limit`` decoded frames of ``receiver``'s track wait for its reader (see
    :class:`DecodedFrames`); the rest are dropped on the decoder thread."""
    frames: asyncio.Queue[Any] = receiver.track._queue  # type: ignore[attr-defined]
    bound = DecodedFrames(frames, limit)
    # On the queue object itself: the decoder thread may already hold it (its argument).
    frames.put = bound.put  # type: ignore[method-assign,assignment]
    frames.get = bound.get  # type: ignore[method-assign]
    return bound


def watch_pli(receiver: RTCRtpReceiver, on_pli: Callable[[], None]) -> PliSender:
    """Call ``on_pli`` each time ``receiver`` asks for a keyframe on its own (its jitter
    buffer dropped frames it could not complete, or its decoder failed); return its PLI
    sender, for our own requests (which ``on_pli`` does not hear)."""
    original: PliSender = receiver._send_rtcp_pli

    async def send(media_ssrc: int) -> None:
        on_pli()
        await original(media_ssrc)

    receiver._send_rtcp_pli = send  # type: ignore[method-assign]
    return original


def media_ssrcs(receiver: RTCRtpReceiver) -> list[int]:
    """The SSRCs of ``receiver``'s media streams seen so far (retransmissions left out):
    where a PLI goes."""
    streams: Mapping[int, Any] = getattr(receiver, "_RTCRtpReceiver__remote_streams", {})
    rtx: Mapping[int, int] = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {})
    return [ssrc for ssrc in streams if ssrc not in rtx]


# -- sender reports, lip sync (peer.media.encoded) ---------------------------------------


def watch_sender_reports(receiver: RTCRtpReceiver, on_report: Callable[[int, int], None]) -> None:
    """Call ``on_report(ntp, rtp)`` with each RTCP sender report of ``receiver``'s media
    stream (64-bit NTP timestamp, 32-bit RTP timestamp: the sender's wall clock at that RTP
    time), before aiortc's own ``_handle_rtcp_packet`` (which keeps only stats of it).
    Reports of a retransmission stream are left out."""
    original = receiver._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            rtx: Mapping[int, int] = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {})
            if packet.ssrc not in rtx:
                info = packet.sender_info
                on_report(info.ntp_timestamp, info.rtp_timestamp)
        await original(packet)

    receiver._handle_rtcp_packet = handle  # type: ignore[method-assign]


def rtp_origin(receiver: RTCRtpReceiver) -> int | None:
    """The RTP timestamp aiortc maps to 0 for ``receiver``'s frames (its first frame's,
    ``TimestampMapper._origin``; a wrap moves it by 2**32), None before the first frame:
    a frame's timestamp plus this is its RTP timestamp modulo 2**32."""
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    origin = getattr(mapper, "_origin", None)
    return origin if isinstance(origin, int) else None


# -- audio delay (peer.media.encoded) ----------------------------------------------------


class AudioPassThrough:
    """Stands in an audio receiver's private jitter buffer (``__jitter_buffer``), whose
    ``add(packet)`` returns ``(pli_flag, frame or None)``.

    aiortc's holds each Opus frame until four newer ones came (80 ms more mouth to ear),
    hands on one frame per packet added, and stops at a lost packet until sixteen more
    came: a loss would cost 300 ms for the rest of the call. Each RTP packet of Opus is a
    whole frame, so here every packet goes on as it comes, in order: one older than the
    last handed on (late, or repeated) is dropped, unless it is far older (the sender's
    numbering restarted). The speaker's and the recorder's mixes are the jitter buffers.
    """

    MAX_MISORDER = 100  # as aiortc's: further back than this is a restart

    def __init__(self) -> None:
        self.late = 0
        self._last: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        number = packet.sequence_number
        if self._last is not None:
            behind = (self._last - number) % 65536
            if behind < self.MAX_MISORDER:  # this one, or one before it, went on already
                self.late += 1
                return False, None
        self._last = number
        data: bytes = getattr(packet, "_data", packet.payload)  # depayloaded by aiortc
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def pass_audio_through(receiver: RTCRtpReceiver) -> AudioPassThrough:
    """Put an :class:`AudioPassThrough` in place of ``receiver``'s jitter buffer (an audio
    receiver's, before its first packet)."""
    name = "_RTCRtpReceiver__jitter_buffer"
    if not isinstance(getattr(receiver, name, None), JitterBuffer):
        raise TypeError(f"{receiver!r} has no aiortc jitter buffer to replace")
    passing = AudioPassThrough()
    setattr(receiver, name, passing)
    return passing


# -- the receive path's per-packet cost (peer.link) ----------------------------------------

#: Milliseconds from the NTP epoch (1900) to the Unix epoch (1970).
_NTP_TO_UNIX_MS = 2_208_988_800_000
_now = datetime.datetime.now
_UTC = datetime.UTC


def _current_ms() -> int:
    """``aiortc.clock.current_ms``: milliseconds since 1900, without datetime arithmetic."""
    return time.time_ns() // 1_000_000 + _NTP_TO_UNIX_MS


def _current_datetime() -> datetime.datetime:
    """``aiortc.clock.current_datetime`` without its two module lookups."""
    return _now(_UTC)


_stun_datagram_received = aioice_ice.StunProtocol.datagram_received
_connection_init = aioice_ice.Connection.__init__


def _datagram_received(
    self: aioice_ice.StunProtocol, data: bytes | str, addr: tuple[Any, ...]
) -> None:
    """``StunProtocol.datagram_received`` that hands media on without first trying to parse
    it as STUN (an exception per RTP packet): a STUN message's first byte is 0-3, DTLS's
    20-63, RTP's and RTCP's 128-191 (RFC 7983)."""
    if data and isinstance(data, bytes) and data[0] > 3:
        self.receiver.data_received(data, self.local_candidate.component)
    else:
        _stun_datagram_received(self, data, addr)


class DatagramQueue:
    """Stands in an aioice ``Connection``'s queue of received datagrams (``_queue``, an
    unbounded ``asyncio.Queue``): the protocol puts each datagram (``put_nowait``), the
    DTLS transport's one reader awaits them (``get``), ``None`` ends it.

    ``asyncio.Queue.get`` looks its loop up on every wait, a ``getpid()`` system call each
    in Python 3.11: with its bookkeeping a tenth of a receiver's event loop time. Here the
    loop is looked up once, and at most ``limit`` datagrams wait (the loop stalled for
    seconds): further ones are dropped, as a full socket buffer would (RTP recovers).
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        #: Datagrams dropped because ``limit`` were waiting.
        self.dropped = 0
        self._items: collections.deque[tuple[bytes, int] | None] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: tuple[bytes, int] | None) -> None:
        if item is not None and len(self._items) >= self.limit:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("more than %d datagrams waiting: dropping", self.limit)
            return
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> tuple[bytes, int] | None:
        while not self._items:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self._items.popleft()


def _update_min_frame_period(self: rate.OveruseEstimator, ts_delta: float) -> float:
    """``OveruseEstimator.update_min_frame_period`` (once per frame of each received video
    stream) without its Python loop over the last 60 deltas."""
    history = self.ts_delta_hist
    if len(history) >= rate.MIN_FRAME_PERIOD_HISTORY_LENGTH:
        history.pop(0)
    least = min(history) if history else ts_delta
    history.append(ts_delta)
    return min(least, ts_delta)


def _connection_with_datagram_queue(self: aioice_ice.Connection, *args: Any, **kwargs: Any) -> None:
    _connection_init(self, *args, **kwargs)
    self._queue = DatagramQueue()  # type: ignore[assignment]


def lighten_receive_path() -> None:
    """Make aiortc's and aioice's work per received datagram cheaper, for every connection
    made from now on in this process (idempotent), with the same results: aiortc reads its
    clock twice per RTP packet through datetime arithmetic, aioice tries to parse each
    datagram as STUN before handing it on and queues it in an ``asyncio.Queue`` (see
    :class:`DatagramQueue`), aiortc's bandwidth estimator loops over 60 values per frame.
    A receiver's floor, and so the recorder's, is this path."""
    clock.current_ms = _current_ms
    clock.current_datetime = _current_datetime
    aioice_ice.StunProtocol.datagram_received = _datagram_received  # type: ignore[method-assign]
    aioice_ice.Connection.__init__ = _connection_with_datagram_queue  # type: ignore[method-assign]
    rate.OveruseEstimator.update_min_frame_period = _update_min_frame_period  # type: ignore[method-assign]
