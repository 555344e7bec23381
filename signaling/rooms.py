"""Room membership as a pure table: who is in which room, in join order, and who owns an ID.

Generic over the connection handle ``C`` so the same decisions serve the in-memory
registry, a Redis-backed one, and the property tests, none of which it knows about.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Generic, TypeVar

from signaling.protocol import CloseCode, ErrorCode, PeerId, RoomId

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Member(Generic[C]):
    peer_id: PeerId
    conn: C
    resume_token: str


@dataclass(frozen=True, slots=True)
class Accepted(Generic[C]):
    """The join went through. ``peers`` excludes the joiner, in join order."""

    member: Member[C]
    peers: tuple[PeerId, ...]
    #: The connection this join took the ID from (a resume), owed its own ``peer-left``.
    replaced: Member[C] | None = None


@dataclass(frozen=True, slots=True)
class Refused(Generic[C]):
    """The join did not go through. Made by the constructors below, the one place each
    refusal's code and text are written, whichever registry refuses."""

    code: ErrorCode
    close_code: CloseCode
    message: str
    #: The live owner of a taken ID: worth a liveness probe, it may be a dead socket.
    holder: C | None = None

    @classmethod
    def id_taken(cls, room: RoomId, peer: PeerId, holder: C | None = None) -> Refused[C]:
        return cls(
            ErrorCode.ID_TAKEN,
            CloseCode.ID_TAKEN,
            f"peer id '{peer}' is already in room '{room}'",
            holder,
        )

    @classmethod
    def bad_resume_token(cls, room: RoomId, peer: PeerId) -> Refused[C]:
        return cls(
            ErrorCode.BAD_RESUME_TOKEN,
            CloseCode.BAD_RESUME_TOKEN,
            f"resume token does not match peer id '{peer}' in room '{room}'",
        )

    @classmethod
    def room_full(cls, room: RoomId, max_peers: int) -> Refused[C]:
        return cls(
            ErrorCode.ROOM_FULL, CloseCode.ROOM_FULL, f"room '{room}' is full ({max_peers} peers)"
        )

    @classmethod
    def unavailable(cls) -> Refused[C]:
        """Shared rooms that cannot be reached now (Redis): the client tries again later."""
        return cls(
            ErrorCode.UNAVAILABLE,
            CloseCode.TRY_AGAIN_LATER,
            "the shared room service is unavailable; try again shortly",
        )


class RoomTable(Generic[C]):
    """Membership of every room. Every method is a decision; nothing here does I/O."""

    def __init__(self, max_peers: int) -> None:
        self.max_peers = max_peers
        self._rooms: dict[RoomId, dict[PeerId, Member[C]]] = {}

    def join(
        self, room: RoomId, peer: PeerId, conn: C, presented_token: str | None, new_token: str
    ) -> Accepted[C] | Refused[C]:
        members = self._rooms.get(room, {})
        holder = members.get(peer)
        replaced: Member[C] | None = None
        if holder is not None:
            if presented_token is None:
                return Refused.id_taken(room, peer, holder.conn)
            # As bytes: compare_digest refuses str with non-ASCII characters (TypeError), and
            # JSON can carry lone surrogates, which only "surrogatepass" encodes.
            presented = presented_token.encode("utf-8", "surrogatepass")
            if not hmac.compare_digest(presented, holder.resume_token.encode()):
                return Refused.bad_resume_token(room, peer)
            replaced = holder
            del members[peer]
        elif len(members) >= self.max_peers:
            return Refused.room_full(room, self.max_peers)
        peers = tuple(members)
        member = Member(peer, conn, new_token)
        members[peer] = member
        self._rooms[room] = members
        return Accepted(member, peers, replaced)

    def leave(self, room: RoomId, peer: PeerId, conn: C) -> tuple[PeerId, ...] | None:
        """Remove ``conn``'s membership; returns who to tell, or None if it held none."""
        members = self._rooms.get(room)
        if members is None:
            return None
        holder = members.get(peer)
        if holder is None or holder.conn is not conn:
            return None  # already replaced by a resume, or never joined
        del members[peer]
        if not members:
            del self._rooms[room]
        return tuple(members)

    def lookup(self, room: RoomId, peer: PeerId) -> Member[C] | None:
        members = self._rooms.get(room)
        return members.get(peer) if members is not None else None

    def members(self, room: RoomId) -> tuple[Member[C], ...]:
        return tuple(self._rooms.get(room, {}).values())

    def room_members(self, room: RoomId) -> dict[PeerId, Member[C]]:
        """The live mapping, for the hot path: do not mutate."""
        return self._rooms.get(room, {})

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    @property
    def peer_count(self) -> int:
        return sum(len(m) for m in self._rooms.values())
