"""Rooms shared by several server nodes through Redis, behind the ``Registry`` interface.

Membership lives in Redis, one hash (peer -> ``node|seq|token``) and one sorted set (join
order) per room, changed only by Lua scripts: a join (ID unique, room size, resume) or a
leave is atomic, and the script itself publishes the change on the room's channel, so
every node sees membership changes in the order they happened.

Delivery goes node to node through pub/sub (``signaling.cluster``): a message for one
peer to the channel of the node holding it; a broadcast once to the room's channel,
which only nodes with members in the room subscribe to. Each node keeps a view of the
rooms it has members in (who, on which node), so ``send`` and ``broadcast`` decide at
once, without a round trip. Everything a node sends to Redis (scripts and publishes) goes
through one bounded queue, one connection, in order (``signaling.redis_pipe``): a peer's
messages reach another peer in the order it sent them, whichever nodes they are on.

Failures: a node that stops answering (liveness key expired) has its members ended by a
survivor (``signaling.redis_liveness``); while Redis is unreachable joins are refused
(``unavailable``) and leaves wait; a node that finds Redis emptied puts its members back.
docs/several-nodes.md. The room records and their scripts: ``signaling.redis_rooms``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from signaling.cluster import (
    Envelope,
    Kind,
    RoomView,
    encode,
    node_channel,
    room_channel,
    unpack,
)
from signaling.ice import IceServer
from signaling.metrics import ClusterStats
from signaling.protocol import (
    Join,
    PeerId,
    PeerJoined,
    PeerLeft,
    PeerList,
    RoomId,
    serialize,
)
from signaling.redis_liveness import NODES, Liveness, index_key, node_key
from signaling.redis_pipe import QUEUE_BYTES as QUEUE_BYTES
from signaling.redis_pipe import QUEUE_LIMIT, CommandPipe, stop_if_cancelled
from signaling.redis_rooms import (
    JOIN,
    LEAVE,
    RESTORE,
    as_text,
    leave_args,
    parse_record,
    room_keys,
)
from signaling.registry import Outbox
from signaling.rooms import Accepted, Member, Refused

__all__ = ["RedisRegistry"]

log = logging.getLogger(__name__)

#: Seconds to wait for a subscription's confirmation, and between reconnection attempts.
SUBSCRIBE_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
RECONNECT_DELAY = 0.5


class RedisRegistry:
    """One node's part of rooms shared through Redis. ``start()`` before serving, ``close()``
    after; ``node`` names this node (random by default)."""

    def __init__(
        self, url: str, max_peers: int, node: str | None = None, queue_bytes: int = QUEUE_BYTES
    ) -> None:
        self.node = node or secrets.token_hex(6)
        self.max_peers = max_peers
        self._url = url
        self._redis: aioredis.Redis | None = None
        self._pubsub: Any = None
        self._views: dict[RoomId, RoomView[Outbox]] = {}
        self._pipe = CommandPipe(queue_bytes)
        self._liveness = Liveness(self.node, self._pipe)
        #: Local joins under way per room (its channel stays subscribed meanwhile).
        self._joining: dict[RoomId, int] = {}
        self._subscribed: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: Leaves Redis did not take (unreachable): sent again when it answers.
        self._unsent_leaves: list[tuple[RoomId, list[str | int]]] = []
        #: Messages received from other nodes.
        self.received = 0
        self._closed = False

    @property
    def published(self) -> int:
        """Messages published for other nodes."""
        return self._pipe.published

    @property
    def dropped(self) -> int:
        """Messages not published: Redis was too far behind (the queue was full)."""
        return self._pipe.dropped

    async def start(self) -> None:
        if self._redis is not None:
            return
        self._redis = aioredis.Redis.from_url(self._url, decode_responses=True)
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            await self._redis.aclose()
            self._redis = None
            raise ConnectionError(f"cannot reach Redis at {self._url}: {exc}") from exc
        self._pubsub = self._redis.pubsub()
        loop = asyncio.get_running_loop()
        await self._liveness.announce(self._redis)
        self._tasks = [
            loop.create_task(self._read()),
            self._pipe.start(self._redis),
            loop.create_task(self._liveness.watch(self._redis, self)),
        ]
        await self._subscribe(node_channel(self.node))
        log.info("node %s sharing rooms through %s", self.node, self._url)

    async def close(self) -> None:
        """Stop, after the server has ended its members (graceful shutdown)."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:  # first: no restore of what is being taken down
            task.cancel()
        _, running = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT)
        if running:
            log.warning("%d registry task(s) did not stop when cancelled", len(running))
        self._pipe.stop()
        # Bounded: a stopping node must not hang on a Redis that does not answer.
        redis, pubsub = self._redis, self._pubsub
        if redis is not None:
            await self._quietly(redis.delete(node_key(self.node)))
            await self._quietly(redis.srem(NODES, self.node))
        if pubsub is not None:
            await self._quietly(pubsub.aclose())
        if redis is not None:
            await self._quietly(redis.aclose())

    @staticmethod
    async def _quietly(step: Awaitable[Any]) -> None:
        try:
            await asyncio.wait_for(step, CLOSE_TIMEOUT)
        except Exception as exc:
            log.debug("closing: %r", exc)

    # -- Registry ---------------------------------------------------------------------
    async def join(
        self, room: RoomId, join: Join, outbox: Outbox, ice_servers: Sequence[IceServer] = ()
    ) -> Accepted[Outbox] | Refused[Outbox]:
        self._joining[room] = self._joining.get(room, 0) + 1
        try:
            return await self._join(room, join, outbox, ice_servers)
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("refusing a join of room %r: Redis unavailable (%r)", room, exc)
            return Refused.unavailable()
        finally:
            self._joining[room] -= 1
            if not self._joining[room]:
                del self._joining[room]
                self._drop_interest(room)

    async def _join(
        self, room: RoomId, join: Join, outbox: Outbox, ice_servers: Sequence[IceServer]
    ) -> Accepted[Outbox] | Refused[Outbox]:
        peer = join.peer_id
        view = await self._interest(room)
        token = secrets.token_urlsafe(18)
        keys = room_keys(room)
        args: list[str | int] = [
            peer, self.node, token, join.resume_token or "", self.max_peers,
            room_channel(room), self.node, room,
        ]  # fmt: skip
        # Indexed first, so a node that dies mid-join leaves nothing a sweep cannot find.
        self._index("SADD", room, peer, token)
        result = await self._pipe.run(JOIN, keys, args)
        status = result[0]
        if status != "ok":
            self._index("SREM", room, peer, token)
            return self._refusal(room, peer, status, result)
        seq, replaced = int(result[1]), result[2]
        order = [PeerId(p) for p in result[3::2]]
        snapshot: dict[PeerId, int] = {}
        for other, record in zip(order, result[4::2], strict=True):
            node, other_seq = parse_record(record)
            view.joined(other, node, other_seq)
            snapshot[other] = other_seq
        if replaced:
            self._ended(view, peer, parse_record(replaced)[1])
        view.connect(peer, self.node, seq, outbox, snapshot, token)
        peers = tuple(order)
        outbox.push(serialize(PeerList(peers, token, room, tuple(ice_servers))))
        self._tell_joined(view, peer, seq)
        return Accepted(Member(peer, outbox, token), peers)

    async def leave(self, room: RoomId, peer: PeerId, outbox: Outbox) -> None:
        view = self._views.get(room)
        entry = view.members.get(peer) if view is not None else None
        if view is None or entry is None or entry.conn is not outbox:
            return  # replaced by a resume, or never joined
        self._ended(view, peer, entry.seq, close_here=False)
        left = Envelope(Kind.LEFT, self.node, room, peer, seq=entry.seq)
        args = leave_args(room, peer, entry.seq, entry.token, encode(left))
        self._drop_interest(room)
        try:
            await self._pipe.run(LEAVE, room_keys(room), args)
            self._index("SREM", room, peer, entry.token)
        except (RedisError, OSError) as exc:  # kept, and sent once Redis answers again
            log.warning("leave of %r from room %r waits for Redis (%r)", peer, room, exc)
            if len(self._unsent_leaves) >= QUEUE_LIMIT:  # bounded: a restarted Redis is empty
                self._unsent_leaves.pop(0)
            self._unsent_leaves.append((room, args))

    def send(self, room: RoomId, to: PeerId, data: str) -> bool:
        view = self._views.get(room)
        entry = view.members.get(to) if view is not None else None
        if entry is None:
            return False
        if entry.conn is not None:
            entry.conn.push(data)
        else:
            message = Envelope(Kind.MESSAGE, self.node, room, to, data=data)
            self._pipe.publish(node_channel(entry.node), encode(message))
        return True

    def broadcast(self, room: RoomId, sender: PeerId, data: str) -> None:
        view = self._views.get(room)
        if view is None:
            return
        for peer, conn in view.local():
            if peer != sender:
                conn.push_fanout(data)
        if view.remote_nodes(self.node):
            message = Envelope(Kind.BROADCAST, self.node, room, sender, data=data)
            self._pipe.publish(room_channel(room), encode(message))

    def others(self, room: RoomId) -> int:
        """Every member this node knows of in the room (on any node) but one."""
        view = self._views.get(room)
        return len(view.members) - 1 if view is not None and view.members else 0

    def counts(self) -> tuple[int, int]:
        """(rooms, peers) with members connected to this node."""
        local = [len(view.local()) for view in self._views.values()]
        return sum(1 for n in local if n), sum(local)

    # -- membership changes -------------------------------------------------------------
    def _refusal(
        self, room: RoomId, peer: PeerId, status: str, result: list[Any]
    ) -> Refused[Outbox]:
        if status == "taken":
            holder = result[1]
            view = self._views.get(room)
            entry = view.members.get(peer) if view is not None else None
            if entry is not None and entry.conn is not None:
                entry.conn.probe()
            elif holder != self.node:
                probe = Envelope(Kind.PROBE, self.node, room, peer)
                self._pipe.publish(node_channel(holder), encode(probe))
            return Refused.id_taken(room, peer)
        if status == "bad-token":
            return Refused.bad_resume_token(room, peer)
        return Refused.room_full(room, self.max_peers)

    def _tell_joined(self, view: RoomView[Outbox], peer: PeerId, seq: int) -> None:
        notice = serialize(PeerJoined(peer))
        for conn in view.to_tell_joined(peer, seq):
            conn.push_fanout(notice)

    def _ended(
        self, view: RoomView[Outbox], peer: PeerId, seq: int, close_here: bool = True
    ) -> None:
        """Membership ``seq`` of ``peer`` ended: forget it, close its connection if it is
        here and still open, tell the members here that knew it."""
        entry = view.left(peer, seq)
        if close_here and entry is not None and entry.conn is not None:
            # Resumed elsewhere, or ended by a sweep (this node looked dead): the client
            # must come back in, not stay connected outside the room.
            entry.conn.replace()
        notice = serialize(PeerLeft(peer))
        for conn in view.to_tell_left(peer, seq):
            conn.push_fanout(notice)

    # -- what other nodes say ------------------------------------------------------------
    def _dispatch(self, envelope: Envelope) -> None:
        """Membership events are applied whoever sent them (this node's own too: members
        learn each membership once, see ``RoomView``); data only from other nodes."""
        view = self._views.get(envelope.room)
        if view is None:
            return
        kind = envelope.kind
        if kind is Kind.JOINED:
            view.joined(envelope.peer, envelope.node, envelope.seq)
            self._tell_joined(view, envelope.peer, envelope.seq)
        elif kind is Kind.LEFT:
            self._ended(view, envelope.peer, envelope.seq)
            self._drop_interest(envelope.room)
        elif envelope.origin == self.node:
            return  # a broadcast of ours, delivered here when it was sent
        elif kind is Kind.BROADCAST:
            for peer, conn in view.local():
                if peer != envelope.peer:
                    conn.push_fanout(envelope.data)
        else:
            entry = view.members.get(envelope.peer)
            if entry is None or entry.conn is None:
                return  # left meanwhile
            if kind is Kind.MESSAGE:
                entry.conn.push(envelope.data)
            elif kind is Kind.PROBE:
                entry.conn.probe()

    # -- subscriptions ---------------------------------------------------------------------
    async def _interest(self, room: RoomId) -> RoomView[Outbox]:
        """The room's view, subscribed to its channel before any membership is read."""
        view = self._views.get(room)
        if view is None:
            view = self._views[room] = RoomView()
            try:
                await self._subscribe(room_channel(room))
            except BaseException:
                del self._views[room]
                self._subscribed.pop(room_channel(room), None)
                raise
        else:
            pending = self._subscribed.get(room_channel(room))
            if pending is not None:
                await asyncio.shield(pending)
        return view

    def _drop_interest(self, room: RoomId) -> None:
        view = self._views.get(room)
        if view is None or view.local() or room in self._joining:
            return
        del self._views[room]
        channel = room_channel(room)
        self._subscribed.pop(channel, None)
        asyncio.get_running_loop().create_task(self._pubsub.unsubscribe(channel))

    async def _subscribe(self, channel: str) -> None:
        confirmed = asyncio.get_running_loop().create_future()
        self._subscribed[channel] = confirmed
        await self._pubsub.subscribe(channel)
        await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT)

    async def _read(self) -> None:
        while True:
            stop_if_cancelled()
            if not self._pubsub.subscribed:
                await asyncio.sleep(0.01)
                continue
            try:  # after a lost connection, redis-py reconnects and subscribes again
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                log.warning("Redis subscription lost (%r); reconnecting", exc)
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            if message is None:
                continue
            if message["type"] == "subscribe":
                waiter = self._subscribed.get(message["channel"])
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif message["type"] == "message":
                try:
                    envelopes = unpack(message["data"])
                except ValueError as exc:
                    log.warning("ignoring a node message: %s", exc)
                    continue
                for envelope in envelopes:
                    if envelope.origin != self.node:
                        self.received += 1
                    self._dispatch(envelope)

    # -- what the liveness loop asks (signaling.redis_liveness.Members) -----------------
    def cluster_stats(self) -> ClusterStats:
        liveness = self._liveness
        return ClusterStats(
            node=self.node,
            redis_up=liveness.redis_up,
            redis_rtt=liveness.rtt,
            published=self.published,
            received=self.received,
            dropped=self.dropped,
            errors=self._pipe.errors + liveness.errors,
        )

    async def resend_leaves(self) -> None:
        """The leaves Redis did not take while unreachable, in order, now that it answers."""
        while self._unsent_leaves:
            room, args = self._unsent_leaves[0]
            await self._pipe.run(LEAVE, room_keys(room), args)
            self._unsent_leaves.pop(0)

    async def restore(self) -> None:
        """Redis lost this node (restarted empty, or it took us for dead): put our members
        back, with their memberships as they were; one whose ID someone else took since
        is closed (it rejoins)."""
        restored = 0
        for room, view in list(self._views.items()):
            for peer, entry in list(view.members.items()):
                if entry.conn is None:
                    continue
                args: list[str | int] = [
                    peer, self.node, entry.seq, entry.token, room_channel(room), room,
                ]  # fmt: skip
                self._index("SADD", room, peer, entry.token)
                outcome = await self._pipe.run(RESTORE, room_keys(room), args)
                if outcome == "superseded":
                    self._ended(view, peer, entry.seq)
                restored += outcome == "restored"
        log.warning("Redis had lost node %s: %d member(s) restored", self.node, restored)

    async def reconcile(self) -> None:
        """After a restore, once the other nodes have had time to restore theirs: members
        this node still shows that Redis does not have are gone (their node died meanwhile)."""
        assert self._redis is not None
        for room, view in list(self._views.items()):
            records = await self._redis.hgetall(room_keys(room)[0])
            present = {as_text(k): parse_record(as_text(v))[1] for k, v in records.items()}
            for peer, entry in list(view.members.items()):
                if entry.conn is None and present.get(peer) != entry.seq:
                    log.info("%r in room %r did not come back after Redis did", peer, room)
                    self._ended(view, peer, entry.seq)

    # -- the one way out -------------------------------------------------------------------
    def _index(self, verb: str, room: RoomId, peer: PeerId, token: str) -> None:
        """Add to or remove from this node's index of its memberships (for sweeping it if it
        dies). Outside the scripts: a script touches only its room's keys, one hash slot,
        as Redis Cluster requires. Each membership's entry carries its token, so removing
        one never removes another of the same peer."""
        entry = f"{room}\x1f{peer}\x1f{token}"
        self._pipe.command((verb, index_key(self.node), entry), len(entry.encode()))
