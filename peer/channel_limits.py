"""What a data channel accepts (docs/PROTOCOL.md 16.1, 16.3): the ``meshpeer`` label, the
bounds of each channel's queue (:class:`DataLimits`) and a message checked against them
(:func:`prepare`). Pure: the channels themselves are :mod:`peer.datachannel`."""

from __future__ import annotations

from dataclasses import dataclass

from peer.chunking import MAX_MESSAGE, Message
from peer.errors import MeshpeerError

__all__ = ["MESHPEER", "DataLimits", "prepare"]

#: The label of the channel that every connection opens (PROTOCOL.md 16.1).
MESHPEER = "meshpeer"


@dataclass(frozen=True)
class DataLimits:
    """The bounds of PROTOCOL.md 16.3, per channel."""

    #: Messages waiting to be handed to aiortc.
    queue_messages: int = 64
    #: Bytes waiting; a message of any allowed size still fits an empty queue.
    queue_bytes: int = MAX_MESSAGE
    #: Seconds a message waits for an open channel before it is dropped.
    wait: float = 10.0
    #: ``bufferedAmount`` high-water mark: above it, wait for ``bufferedamountlow``.
    buffered: int = 1024 * 1024
    #: The largest message sent or joined on the ``meshpeer`` channel.
    message: int = MAX_MESSAGE

    @property
    def low(self) -> int:
        """``bufferedAmountLowThreshold``: sending resumes once aiortc holds this little."""
        return self.buffered // 2


def prepare(data: object, limit: int, label: str) -> tuple[Message, int]:
    """``data`` as an immutable message and its size in bytes; refused when over ``limit``."""
    if isinstance(data, str):
        try:
            size = len(data.encode())
        except UnicodeEncodeError as exc:
            raise MeshpeerError(f"text for channel {label!r} has no UTF-8 form: {exc}") from None
        message: Message = data
    elif isinstance(data, bytes | bytearray | memoryview):
        message = bytes(data)  # a copy of a mutable buffer: it may change while queued
        size = len(message)
    else:
        raise TypeError(f"data to send must be str or bytes, not {type(data).__name__}")
    if size > limit:
        if label == MESHPEER:
            raise MeshpeerError(
                f"a message of {size} bytes is over the {limit}-byte limit of channel {label!r}"
            )
        raise MeshpeerError(
            f"a message of {size} bytes is too large for channel {label!r}: extra channels "
            f"carry raw messages of at most {limit} bytes (send_data cuts larger ones up)"
        )
    return message, size
