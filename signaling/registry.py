"""Room membership and delivery behind one small interface.

The adapter talks only to :class:`Registry`; :class:`LocalRegistry` keeps everything in
this process; :class:`signaling.redis_registry.RedisRegistry` shares rooms between several
server processes through Redis, with no change to the protocol core or the adapter.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Protocol

from signaling.ice import IceServer
from signaling.metrics import ClusterStats
from signaling.protocol import Join, PeerId, PeerJoined, PeerLeft, PeerList, RoomId, serialize
from signaling.rooms import Accepted, Refused, RoomTable


class Outbox(Protocol):
    """Where a registry delivers text for one connection. Never blocks."""

    def push(self, data: str) -> None:
        """Queue ``data``; a full queue makes the outbox drop its own client."""

    def push_fanout(self, data: str) -> None:
        """``push`` of one str that many outboxes get (a room notice, a broadcast): it may be
        written a little later than a ``push`` (the server interleaves a large room's writes
        with its other work), never out of order with this outbox's other frames."""

    def probe(self) -> None:
        """Someone asked for this peer's ID: check it is still alive, drop it if not."""

    def replace(self) -> None:
        """This peer resumed on another connection: close this one."""


class Registry(Protocol):
    async def start(self) -> None:
        """Before the first join (connect to shared storage, if any)."""

    async def close(self) -> None:
        """After the last leave."""

    def cluster_stats(self) -> ClusterStats | None:
        """This node's part in rooms shared with other nodes; None when not shared."""

    async def join(
        self, room: RoomId, join: Join, outbox: Outbox, ice_servers: Sequence[IceServer] = ()
    ) -> Accepted[Outbox] | Refused[Outbox]:
        """Admit ``outbox`` as ``join.peer_id``: its ``peer-list`` (with ``ice_servers``) first,
        then ``peer-joined``."""

    async def leave(self, room: RoomId, peer: PeerId, outbox: Outbox) -> None:
        """End ``outbox``'s membership; ``peer-left`` to the rest, exactly once per join."""

    def send(self, room: RoomId, to: PeerId, data: str) -> bool:
        """Deliver to one peer; False when no such peer is in the room."""

    def broadcast(self, room: RoomId, sender: PeerId, data: str) -> None:
        """Deliver to everyone in the room but ``sender``."""

    def others(self, room: RoomId) -> int:
        """How many members a broadcast by one member of ``room`` reaches: it prices the
        broadcast against the sender's byte budget (``Limits.byte_rate``). Per message: cheap."""

    def counts(self) -> tuple[int, int]:
        """(rooms, peers), for health and metrics."""


class LocalRegistry:
    """All rooms in this process' memory; every call completes without awaiting."""

    def __init__(self, max_peers: int) -> None:
        self.table: RoomTable[Outbox] = RoomTable(max_peers)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def cluster_stats(self) -> ClusterStats | None:
        return None

    async def join(
        self, room: RoomId, join: Join, outbox: Outbox, ice_servers: Sequence[IceServer] = ()
    ) -> Accepted[Outbox] | Refused[Outbox]:
        outcome = self.table.join(
            room, join.peer_id, outbox, join.resume_token, secrets.token_urlsafe(18)
        )
        if isinstance(outcome, Refused):
            if outcome.holder is not None:
                outcome.holder.probe()
            return outcome
        # The live mapping: pushing never changes membership (a dropped outbox leaves later).
        members = self.table.room_members(room).values()
        me = outcome.member
        if outcome.replaced is not None:
            left = serialize(PeerLeft(join.peer_id))
            for member in members:
                if member is not me:
                    member.conn.push_fanout(left)
            outcome.replaced.conn.replace()
        token = me.resume_token
        outbox.push(serialize(PeerList(outcome.peers, token, room, tuple(ice_servers))))
        joined = serialize(PeerJoined(join.peer_id))
        for member in members:
            if member is not me:
                member.conn.push_fanout(joined)
        return outcome

    async def leave(self, room: RoomId, peer: PeerId, outbox: Outbox) -> None:
        remaining = self.table.leave(room, peer, outbox)
        if not remaining:
            return
        left = serialize(PeerLeft(peer))
        for member in self.table.room_members(room).values():
            member.conn.push_fanout(left)

    def send(self, room: RoomId, to: PeerId, data: str) -> bool:
        member = self.table.room_members(room).get(to)
        if member is None:
            return False
        member.conn.push(data)
        return True

    def broadcast(self, room: RoomId, sender: PeerId, data: str) -> None:
        for peer, member in self.table.room_members(room).items():
            if peer != sender:
                member.conn.push_fanout(data)

    def others(self, room: RoomId) -> int:
        members = len(self.table.room_members(room))
        return members - 1 if members else 0

    def counts(self) -> tuple[int, int]:
        return self.table.room_count, self.table.peer_count
