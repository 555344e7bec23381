"""Framing of the ``meshpeer`` data channel (docs/PROTOCOL.md section 16.2), without I/O.

Browsers and aiortc do not agree on the largest message an SCTP data channel carries, so no
frame is larger than :data:`MAX_FRAME` (16 KiB): :func:`frames` cuts a message into frames,
a :class:`Reassembler` joins them back into one message on the other side.

- A text message of at most 16384 UTF-8 bytes is one string frame, as is.
- A binary frame is one kind byte (:class:`FrameKind`) and payload: a whole binary message,
  or a piece (binary or text) of a larger one, the last piece marked.

The receiver drops, and says why (:class:`Dropped`), a message larger than its limit, a
frame of unknown kind and a piece of the other kind than the message being joined (that
piece only: the message being joined goes on). Sent by the rules, none of that happens;
so these choices only decide how a broken sender's garbage is discarded, never a message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

#: The largest frame, in bytes (UTF-8 bytes for a string frame).
MAX_FRAME = 16384
#: Payload bytes in one binary frame (one byte goes to the kind).
MAX_PIECE = MAX_FRAME - 1
#: The largest message a receiver joins by default (and that the agent sends).
MAX_MESSAGE = 16 * 1024 * 1024

Message = str | bytes


class FrameKind(IntEnum):
    """The first byte of a binary frame."""

    WHOLE = 0x00  # a whole binary message
    BINARY_PIECE = 0x01  # a piece of a binary message; more follow
    BINARY_LAST = 0x02  # the last piece of a binary message
    TEXT_PIECE = 0x03  # a piece of a text message (UTF-8 bytes); more follow
    TEXT_LAST = 0x04  # the last piece of a text message


def message_size(message: Message) -> int:
    """Bytes on the wire: UTF-8 bytes of a text (raises UnicodeEncodeError if it has none)."""
    return len(message.encode()) if isinstance(message, str) else len(message)


def frames(message: Message) -> Iterator[Message]:
    """The frames of ``message``, in order, each at most :data:`MAX_FRAME` bytes.

    A generator: a large message is cut as it is sent, one piece at a time.
    """
    if isinstance(message, str):
        data = message.encode()
        if len(data) <= MAX_FRAME:
            yield message
            return
        piece, last = FrameKind.TEXT_PIECE, FrameKind.TEXT_LAST
    else:
        if len(message) <= MAX_PIECE:
            yield bytes((FrameKind.WHOLE,)) + message
            return
        data = message
        piece, last = FrameKind.BINARY_PIECE, FrameKind.BINARY_LAST
    view = memoryview(data)
    for start in range(0, len(data), MAX_PIECE):
        end = start + MAX_PIECE
        yield bytes((last if end >= len(data) else piece,)) + view[start:end]


@dataclass(frozen=True)
class Dropped:
    """What a receiver threw away, and why; ``size``: bytes of it received."""

    reason: str
    size: int


_Joining = Literal["text", "binary"]


class Reassembler:
    """Joins the frames of one channel into messages; holds at most ``limit`` bytes.

    :meth:`feed` each frame in order: it returns a whole message, a :class:`Dropped`, or
    None while a message is still being joined. :meth:`abandon` when the channel closes.
    """

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        self.limit = limit
        self._joining: _Joining | None = None
        self._parts: list[bytes] = []
        self._size = 0  # bytes of the message being joined, kept or not
        self._over = False  # over the limit: its pieces are counted, not kept

    @property
    def pending(self) -> int:
        """Bytes of a message being joined (0 between messages)."""
        return self._size

    def feed(self, frame: Message) -> Message | Dropped | None:
        if isinstance(frame, str):
            return frame  # a whole text message
        if not frame:
            return Dropped("an empty binary frame, without its kind byte", 0)
        kind, payload = frame[0], frame[1:]
        if kind == FrameKind.WHOLE:
            return payload
        if kind > FrameKind.TEXT_LAST:
            return Dropped(f"a frame of unknown kind {kind:#04x}", len(payload))
        joining: _Joining = "text" if kind >= FrameKind.TEXT_PIECE else "binary"
        if self._joining is not None and joining != self._joining:
            return Dropped(
                f"a piece of a {joining} message in the middle of a {self._joining} message",
                len(payload),
            )
        self._joining = joining
        self._size += len(payload)
        if self._size > self.limit:
            self._over = True
            self._parts.clear()
        elif not self._over:
            self._parts.append(payload)
        if kind not in (FrameKind.BINARY_LAST, FrameKind.TEXT_LAST):
            return None
        return self._finish(joining)

    def _finish(self, joining: _Joining) -> Message | Dropped:
        size, over = self._size, self._over
        data = b"".join(self._parts)
        self._reset()
        if over:
            reason = f"a {joining} message of {size} bytes, over the {self.limit}-byte limit"
            return Dropped(reason, size)
        if joining == "binary":
            return data
        try:
            return data.decode()
        except UnicodeDecodeError:
            return Dropped(f"a text message of {size} bytes that is not valid UTF-8", size)

    def abandon(self) -> Dropped | None:
        """The channel closed: the message being joined, if any, is lost."""
        if self._joining is None:
            return None
        dropped = Dropped(
            f"a {self._joining} message cut off after {self._size} bytes: the channel closed",
            self._size,
        )
        self._reset()
        return dropped

    def _reset(self) -> None:
        self._joining = None
        self._parts = []
        self._size = 0
        self._over = False
