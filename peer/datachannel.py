"""The agent's data channels (docs/PROTOCOL.md section 16): the ``meshpeer`` channel of every
connection, the extra channels, and the bounded queues in front of them.

Why queues: aiortc's ``RTCDataChannel.send`` never refuses and buffers without bound, so a
peer that reads slowly (or not at all) would grow our memory, and a send that waited for it
would hold up everyone else. Each :class:`DataChannel` keeps its own bounded queue and one
task that hands it to aiortc while ``bufferedAmount`` is under a high-water mark and waits
for ``bufferedamountlow`` otherwise: a stalled peer fills only its own queue; beyond that its
messages are dropped and reported (:class:`DataDropped` and a log line).

- The ``meshpeer`` channel to a peer is one :class:`DataChannel` for as long as the peer is in
  the room. When its connection is replaced, the new connection's channel takes over the
  queue: what was not handed to aiortc yet goes on the new one; a message cut off half-way
  is reported lost (what aiortc had already taken is lost with the old connection,
  unreported: nobody can tell how much of it arrived). Messages wait for an open channel
  at most :attr:`DataLimits.wait` seconds, counted from when they were sent or when the
  channel went away, whichever is later.
- An extra channel (:meth:`peer.agent.Agent.open_channel`, or opened by the remote) belongs
  to one connection: raw messages of at most 16 KiB, no framing, closed with it.

Which channels a peer has is kept in its record (:class:`peer.room.RemotePeer`), by
:class:`peer.dataplane.DataPlane`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from peer.channel_limits import MESHPEER as MESHPEER
from peer.channel_limits import DataLimits as DataLimits
from peer.channel_limits import prepare as prepare
from peer.chunking import MAX_FRAME, Dropped, Message, Reassembler, frames
from signaling.protocol import PeerId

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCPeerConnection

log = logging.getLogger(__name__)

#: Drop log lines per channel: at most one a second, with a count of those left out.
_LOG_EVERY = 1.0


@dataclass(frozen=True)
class DataReceived:
    """A message from ``peer`` on the data channel labelled ``channel``: ``str`` if it was
    sent as text, ``bytes`` otherwise; whole (the ``meshpeer`` channel joins its pieces)."""

    peer: PeerId
    data: str | bytes
    channel: str = "meshpeer"


@dataclass(frozen=True)
class DataDropped:
    """A data channel message was lost: one we sent to ``peer`` (``incoming`` False: its
    queue was full, nothing opened in time, the connection or the peer went) or one it sent
    us (cut off, over the size limit, malformed). ``size``: its bytes, as far as known."""

    peer: PeerId
    reason: str
    size: int
    channel: str = "meshpeer"
    incoming: bool = False


@dataclass(frozen=True)
class ChannelOpened:
    """A data channel to ``peer`` opened: the ``meshpeer`` one of each new connection, one we
    opened, or one the peer opened (``channel.send`` answers on it)."""

    peer: PeerId
    label: str
    channel: DataChannel


#: What a channel tells the agent's user (re-exported by :mod:`peer.events`).
ChannelEvent: TypeAlias = DataReceived | DataDropped | ChannelOpened


class ChannelOwner(Protocol):
    """The connection channels belong to (a :class:`peer.link.PeerLink`), as seen from here."""

    @property
    def remote(self) -> PeerId: ...

    @property
    def pc(self) -> RTCPeerConnection: ...


@dataclass
class _Queued:
    message: Message
    size: int
    queued_at: float  # loop.time()


class DataChannel:
    """One channel to ``peer`` labelled ``label``: :meth:`send` queues, never waits.

    ``framed``: the ``meshpeer`` channel (PROTOCOL.md 16.2 framing, messages up to
    ``limits.message``, kept across connections). Otherwise an extra channel: raw messages
    of at most 16 KiB, closed with its connection.
    """

    def __init__(
        self,
        peer: PeerId,
        label: str,
        *,
        framed: bool,
        limits: DataLimits,
        emit: Callable[[ChannelEvent], None],
    ) -> None:
        self.peer = peer
        self.label = label
        self.framed = framed
        self.limits = limits
        self.closed = False
        #: Messages handed whole to aiortc, and messages dropped (both ways).
        self.sent = 0
        self.dropped = 0
        self._emit = emit
        self._rtc: RTCDataChannel | None = None
        self._owner: ChannelOwner | None = None
        self._listeners: list[tuple[str, Callable[..., Any]]] = []
        self._reassembler = Reassembler(limits.message) if framed else None
        self._queue: deque[_Queued] = deque()
        self._queued_bytes = 0
        self._pump: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None
        self._closed_since = 0.0  # loop.time() when the last open channel went away
        self._quiet_until = 0.0
        self._unlogged = 0

    def __repr__(self) -> str:
        return f"DataChannel({self.peer!r}, {self.label!r}, open={self.is_open})"

    @property
    def is_open(self) -> bool:
        """Whether the channel is open now (``send()`` raises otherwise)."""
        return self._rtc is not None and self._rtc.readyState == "open"

    @property
    def ordered(self) -> bool:
        """Whether messages arrive in the order sent."""
        return self._rtc.ordered if self._rtc is not None else True

    @property
    def max_retransmits(self) -> int | None:
        """How often a lost message is sent again; None: until it arrives (reliable)."""
        return self._rtc.maxRetransmits if self._rtc is not None else None

    @property
    def queued(self) -> int:
        """Messages waiting to be handed to aiortc."""
        return len(self._queue)

    @property
    def buffered_amount(self) -> int:
        """Bytes aiortc holds for this channel (its ``bufferedAmount``)."""
        return self._rtc.bufferedAmount if self._rtc is not None else 0

    def send(self, data: str | bytes) -> bool:
        """Queue ``data``; False when it was dropped (reported), e.g. the queue is full.

        Raises MeshpeerError for a message over the channel's limit.
        """
        limit = self.limits.message if self.framed else MAX_FRAME
        return self.put(*prepare(data, limit, self.label))

    def close(self) -> None:
        """Close the channel (what is still queued is dropped and reported)."""
        if self._rtc is not None:
            self._rtc.close()
        self.shut("the channel was closed")

    # -- the agent's side -------------------------------------------------------------

    def put(self, message: Message, size: int) -> bool:
        """Queue a message checked by :func:`prepare`."""
        if self.closed:
            self._dropped("the channel is closed", size)
            return False
        if len(self._queue) >= self.limits.queue_messages or (
            self._queue and self._queued_bytes + size > self.limits.queue_bytes
        ):
            self._dropped(
                f"the send queue is full ({len(self._queue)} messages, "
                f"{self._queued_bytes} bytes waiting)",
                size,
            )
            return False
        self._queue.append(_Queued(message, size, asyncio.get_running_loop().time()))
        self._queued_bytes += size
        self._kick()
        return True

    def attach(self, rtc: RTCDataChannel, owner: ChannelOwner) -> None:
        """``rtc`` (a channel of the connection ``owner``) carries this channel from now on."""
        if self._rtc is not None:
            self.detach(self._rtc)
        if self.closed:
            return
        self._rtc, self._owner = rtc, owner
        rtc.bufferedAmountLowThreshold = self.limits.low
        self._listen(rtc, "open", self._opened)
        self._listen(rtc, "message", self._received)
        self._listen(rtc, "bufferedamountlow", self._drained.set)
        self._listen(rtc, "close", lambda: self.detach(rtc))
        if rtc.readyState == "open":  # opened by the remote: aiortc opens it before telling
            self._opened()
        else:
            self._kick()

    def detach_from(self, owner: ChannelOwner) -> None:
        """The connection ``owner`` closed: stop using its channel, if it is ours."""
        if self._rtc is not None and self._owner is owner:
            self.detach(self._rtc)

    def detach(self, rtc: RTCDataChannel) -> None:
        """``rtc`` closed: the queue waits for the next channel (an extra one closes)."""
        if rtc is not self._rtc:
            return
        self._release()
        if not self.framed:
            self.shut("the channel closed")
            return
        self._closed_since = asyncio.get_running_loop().time()
        self._kick()

    def shut(self, reason: str) -> None:
        """No more sending or receiving: everything still queued is dropped with ``reason``."""
        if self.closed:
            return
        self.closed = True
        self._release()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._pump is not None:
            self._pump.cancel()  # the message it was sending is still first in the queue
            self._pump = None
        queued, self._queue = self._queue, deque()
        self._queued_bytes = 0
        for item in queued:
            self._dropped(reason, item.size)

    # -- aiortc's side ----------------------------------------------------------------

    def _listen(self, rtc: RTCDataChannel, event: str, listener: Callable[..., Any]) -> None:
        rtc.on(event, listener)
        self._listeners.append((event, listener))

    def _release(self) -> None:
        """Forget the current aiortc channel; a message half-received on it is lost."""
        rtc = self._rtc
        if rtc is None:
            return
        for event, listener in self._listeners:
            with contextlib.suppress(KeyError):  # aiortc drops every listener once closed
                rtc.remove_listener(event, listener)
        self._listeners.clear()
        self._rtc = self._owner = None
        self._drained.set()  # a pump waiting for it to drain ends
        if self._reassembler is not None and (lost := self._reassembler.abandon()) is not None:
            self._dropped(lost.reason, lost.size, incoming=True)

    def _opened(self) -> None:
        log.info("data channel %r to %s open", self.label, self.peer)
        self._emit(ChannelOpened(self.peer, self.label, self))
        self._kick()

    def _received(self, message: Message) -> None:
        try:
            if self._reassembler is None:
                self._emit(DataReceived(self.peer, message, self.label))
                return
            result = self._reassembler.feed(message)
            if isinstance(result, Dropped):
                self._dropped(result.reason, result.size, incoming=True)
            elif result is not None:
                self._emit(DataReceived(self.peer, result, self.label))
        except Exception:  # never into aiortc's receive loop
            log.exception("handling a message from %s on %r failed", self.peer, self.label)

    # -- sending ----------------------------------------------------------------------

    def _kick(self) -> None:
        """Send if the channel is open, else (re)arm the timer of the oldest message."""
        if self.closed:
            return
        if not self.is_open:
            self._arm_expiry()
        elif self._queue and self._pump is None:
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None
            self._pump = asyncio.get_running_loop().create_task(
                self._run(), name=f"data {self.peer} {self.label}"
            )

    async def _run(self) -> None:
        try:
            await self._send_queued()
        except Exception:  # a bug: do not retry in a loop; the next send tries again
            log.exception("sending to %s on %r failed", self.peer, self.label)
            return
        finally:
            if self._pump is asyncio.current_task():
                self._pump = None
        if not self.is_open:
            self._closed_since = asyncio.get_running_loop().time()
        self._kick()  # a new channel may have come while this one ended

    async def _send_queued(self) -> None:
        rtc = self._rtc
        while self._queue and rtc is not None and rtc is self._rtc and rtc.readyState == "open":
            item = self._queue[0]
            started, refused = False, ""
            for frame in frames(item.message) if self.framed else (item.message,):
                if not await self._room_for(rtc, frame):
                    break
                try:
                    rtc.send(frame)
                except Exception as exc:  # e.g. over the remote's max-message-size
                    refused = f"aiortc refused it: {exc!r}"
                    break
                started = True
            else:
                self._pop()
                self.sent += 1
                continue
            if refused:
                self._pop()
                self._dropped(refused, item.size)
                continue
            # The channel went away. Not started: it waits for the next. Cut off: lost.
            if started:
                self._pop()
                self._dropped("the connection closed while it was being sent", item.size)
            return

    def _pop(self) -> None:
        item = self._queue.popleft()
        self._queued_bytes -= item.size

    async def _room_for(self, rtc: RTCDataChannel, frame: Message) -> bool:
        """Wait until aiortc holds little enough to take ``frame``; False if ``rtc`` went."""
        size = len(frame.encode()) if isinstance(frame, str) else len(frame)
        while rtc is self._rtc and rtc.readyState == "open":
            buffered: int = rtc.bufferedAmount
            if buffered <= self.limits.low or buffered + size <= self.limits.buffered:
                return True
            self._drained.clear()
            await self._drained.wait()
        return False

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if not self._queue:
            return
        due = max(self._queue[0].queued_at, self._closed_since) + self.limits.wait
        self._expiry = asyncio.get_running_loop().call_at(due, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        if self.is_open or self.closed:
            return
        now = asyncio.get_running_loop().time()
        while (
            self._queue
            and max(self._queue[0].queued_at, self._closed_since) + (self.limits.wait) <= now
        ):
            item = self._queue[0]
            self._pop()
            self._dropped(f"no open channel within {self.limits.wait:g} s", item.size)
        self._arm_expiry()

    def _dropped(self, reason: str, size: int, *, incoming: bool = False) -> None:
        self.dropped += 1
        self._emit(DataDropped(self.peer, reason, size, self.label, incoming))
        now = time.monotonic()
        if now < self._quiet_until:
            self._unlogged += 1
            return
        more = f" (and {self._unlogged} more since the last line)" if self._unlogged else ""
        log.warning(
            "message %s %s on %r dropped (%d bytes): %s%s",
            "from" if incoming else "to", self.peer, self.label, size, reason, more,
        )  # fmt: skip
        self._quiet_until = now + _LOG_EVERY
        self._unlogged = 0
