"""What server nodes sharing rooms tell each other, and each node's view of its rooms.

Pure: no Redis, no sockets (``signaling.redis_registry`` carries it). Node messages are one
line of fields split by ``\\x1f``: peer IDs, room names and node IDs never contain control
characters (``protocol.check_name``), and the signaling frame a message carries comes last,
taken whole. Under load a node packs the messages it sends one node in a row into one
publish (``pack``): fewer commands for Redis, fewer deliveries to parse.

A member is known by its join's sequence number (``seq``, one counter for all rooms in
Redis): a resumed peer is a new member with a new ``seq``, so a late ``left`` for its old
membership never removes the new one, and a ``joined`` a node already knows is ignored.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from signaling.protocol import PeerId, RoomId

__all__ = [
    "Envelope",
    "Kind",
    "RoomView",
    "decode",
    "encode",
    "node_channel",
    "pack",
    "room_channel",
    "unpack",
]

SEP = "\x1f"
C = TypeVar("C")


class Kind(enum.StrEnum):
    JOINED = "j"  # room channel: a member joined (peer, node, seq)
    LEFT = "l"  # room channel: a member left (peer, seq); replaced: it resumed elsewhere
    BROADCAST = "b"  # room channel: data for every member but peer (the sender)
    MESSAGE = "m"  # node channel: data for one member (peer)
    PROBE = "p"  # node channel: someone wants peer's ID; check its connection is alive


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: Kind
    origin: str  # the node that sent it
    room: RoomId
    peer: PeerId
    node: str = ""  # JOINED: where the member is connected
    seq: int = 0  # JOINED, LEFT: the membership
    replaced: bool = False  # LEFT: by a resume (its connection is closed, not told)
    data: str = ""  # BROADCAST, MESSAGE: the signaling frame


def room_channel(room: RoomId) -> str:
    return f"mp:r:{room}"


def node_channel(node: str) -> str:
    return f"mp:n:{node}"


def encode(envelope: Envelope) -> str:
    e = envelope
    return SEP.join(
        (
            e.kind.value,
            e.origin,
            e.room,
            e.peer,
            e.node,
            str(e.seq),
            "r" if e.replaced else "",
            e.data,
        )
    )


def pack(encoded: list[str]) -> str:
    """Several encoded envelopes as one node message (one publish, one delivery): each
    prefixed by its length and ``:``. A single one goes as it is."""
    if len(encoded) == 1:
        return encoded[0]
    return "".join(f"{len(text)}:{text}" for text in encoded)


def unpack(text: str) -> list[Envelope]:
    """The envelopes of a node message, packed or single; ValueError if it is neither."""
    if not text[:1].isdigit():
        return [decode(text)]
    out, at = [], 0
    while at < len(text):
        colon = text.find(":", at)
        if colon < 0 or not text[at:colon].isdigit():
            raise ValueError(f"not a packed node message: {text[at : at + 80]!r}")
        end = colon + 1 + int(text[at:colon])
        if end > len(text):
            raise ValueError("a packed node message cut short")
        out.append(decode(text[colon + 1 : end]))
        at = end
    return out


def decode(text: str) -> Envelope:
    """The envelope in ``text``; ValueError if it is not one."""
    parts = text.split(SEP, 7)
    if len(parts) != 8:
        raise ValueError(f"not a node message: {text[:80]!r}")
    kind, origin, room, peer, node, seq, replaced, data = parts
    return Envelope(
        Kind(kind), origin, RoomId(room), PeerId(peer), node, int(seq), replaced == "r", data
    )


@dataclass(slots=True)
class Entry(Generic[C]):
    seq: int
    node: str
    conn: C | None = None  # set when connected to this node
    #: For a member connected here: whom it knows (peer -> membership seq), from its
    #: peer-list and the notices since. A notice goes to it only when that changes, so
    #: it gets exactly one peer-joined and one peer-left per membership it learns of,
    #: whatever order snapshots and events reach this node in.
    known: dict[PeerId, int] = field(default_factory=dict)
    #: For a member connected here: its resume token (to restore it into an emptied Redis).
    token: str = ""


@dataclass
class RoomView(Generic[C]):
    """The members of one room as this node knows them: who, on which node, since when."""

    members: dict[PeerId, Entry[C]] = field(default_factory=dict)

    def joined(self, peer: PeerId, node: str, seq: int) -> None:
        """Record a membership, unless this one (or a newer one) is known already."""
        known = self.members.get(peer)
        if known is None or known.seq < seq:
            self.members[peer] = Entry(seq, node)

    def connect(
        self, peer: PeerId, node: str, seq: int, conn: C, knows: dict[PeerId, int], token: str
    ) -> None:
        """A member connected to this node, knowing ``knows`` (its peer-list)."""
        self.members[peer] = Entry(seq, node, conn, dict(knows), token)

    def left(self, peer: PeerId, seq: int) -> Entry[C] | None:
        """Forget membership ``seq`` of ``peer``; the entry, or None if not that one."""
        known = self.members.get(peer)
        if known is None or known.seq != seq:
            return None
        del self.members[peer]
        return known

    def to_tell_joined(self, peer: PeerId, seq: int) -> list[C]:
        """The local members that learn of membership ``seq`` of ``peer`` now."""
        told = []
        for other, entry in self.members.items():
            if entry.conn is None or other == peer or entry.known.get(peer, -1) >= seq:
                continue
            entry.known[peer] = seq
            told.append(entry.conn)
        return told

    def to_tell_left(self, peer: PeerId, seq: int) -> list[C]:
        """The local members that knew membership ``seq`` of ``peer`` and now learn it ended."""
        told = []
        for entry in self.members.values():
            if entry.conn is not None and entry.known.get(peer) == seq:
                del entry.known[peer]
                told.append(entry.conn)
        return told

    def local(self) -> list[tuple[PeerId, C]]:
        return [(peer, e.conn) for peer, e in self.members.items() if e.conn is not None]

    def remote_nodes(self, here: str) -> set[str]:
        return {e.node for e in self.members.values() if e.node != here}
