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
through one bounded queue, one connection, in order: a peer's messages reach another
peer in the order it sent them, whichever nodes they are on.

Failures: a node that stops answering (liveness key expired) has its members ended by a
survivor; while Redis is unreachable joins are refused (``unavailable``) and leaves wait;
a node that finds Redis emptied puts its members back. README, "Several server nodes".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from signaling.cluster import (
    Envelope,
    Kind,
    RoomView,
    encode,
    node_channel,
    pack,
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
from signaling.registry import Outbox
from signaling.rooms import Accepted, Member, Refused

__all__ = ["RedisRegistry"]

log = logging.getLogger(__name__)

#: Seconds to wait for a subscription's confirmation, and between reconnection attempts.
SUBSCRIBE_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
RECONNECT_DELAY = 0.5
#: The set of nodes sharing rooms (each one's liveness key: ``mp:node:<id>``).
NODES = "mp:nodes"
#: Commands waiting for Redis; beyond this a node is far behind and drops what it sends.
QUEUE_LIMIT = 65_536
#: Bytes those commands may hold (publishes carry whole frames, up to max_frame_bytes: at the
#: count bound alone, 4 GiB): beyond this, the same. About 2 s of a node's peak traffic.
QUEUE_BYTES = 64 * 1024 * 1024
#: Commands sent in one pipeline (one round trip).
BATCH = 512
#: A node refreshes its liveness key every HEARTBEAT seconds; one silent for NODE_TTL is
#: dead, and the first survivor to notice (checking every SWEEP_EVERY) ends its members.
HEARTBEAT = 1.0
NODE_TTL = 5.0
SWEEP_EVERY = 2.0
#: Seconds after restoring into an emptied Redis before checking what others restored.
RECONCILE_AFTER = 3 * HEARTBEAT + 1.0
#: Seconds an empty room's join counter is kept: a membership is known by its sequence
#: number, and events of the old ones may still be on their way (a "left" published on the
#: room's channel, a leave sent again after a short Redis outage): they must not meet a new
#: membership with the same number. A leave later than this still never ends a newer
#: membership (it must match its token too); meanwhile an abandoned room costs one key.
EMPTY_ROOM_TTL = 600

_JOIN = """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
local replaced = ''
if rec then
  local node, seq, token = string.match(rec, '^([^|]*)|([^|]*)|(.*)$')
  if ARGV[4] == '' then return {'taken', node} end
  if token ~= ARGV[4] then return {'bad-token'} end
  redis.call('ZREM', KEYS[2], ARGV[1])
  local gone = {'l', ARGV[7], ARGV[8], ARGV[1], '', seq, 'r', ''}
  redis.call('PUBLISH', ARGV[6], table.concat(gone, '\\31'))
  replaced = rec
elseif redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  return {'full'}
end
local seq = redis.call('INCR', KEYS[3])
redis.call('PERSIST', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. seq .. '|' .. ARGV[3])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
local came = {'j', ARGV[7], ARGV[8], ARGV[1], ARGV[2], seq, '', ''}
redis.call('PUBLISH', ARGV[6], table.concat(came, '\\31'))
local out = {'ok', tostring(seq), replaced}
for _, peer in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if peer ~= ARGV[1] then
    table.insert(out, peer)
    table.insert(out, redis.call('HGET', KEYS[1], peer))
  end
end
return out
"""

_LEAVE = """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return -1 end
if string.match(rec, '^[^|]*|(.*)$') ~= ARGV[2] then return -1 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
local left = redis.call('HLEN', KEYS[1])
if left == 0 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
return left
"""


_RESTORE = """
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if rec then
  local seq = string.match(rec, '^[^|]*|([^|]*)|')
  if seq == ARGV[3] then return 'kept' end
  return 'superseded'
end
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[3], ARGV[3])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local came = {'j', ARGV[2], ARGV[6], ARGV[1], ARGV[2], ARGV[3], '', ''}
redis.call('PUBLISH', ARGV[5], table.concat(came, '\\31'))
return 'restored'
"""


def _keys(room: RoomId) -> list[str]:
    """The room's hash, order and counter. One hash tag, so one slot in Redis Cluster: a
    hash of the name, which may hold braces of its own (``}`` would end a tag early); the
    name follows it, so two rooms never share keys, whatever their hashes."""
    digest = hashlib.blake2s(room.encode(), digest_size=4).hexdigest()
    prefix = f"mp:{{{digest}}}:{room}"
    return [f"{prefix}:m", f"{prefix}:o", f"{prefix}:s"]


def _leave_args(room: RoomId, peer: PeerId, seq: int, token: str, left: str) -> list[str | int]:
    """The leave of membership ``seq`` (with ``token``) of ``peer``: it ends that one only."""
    return [peer, f"{seq}|{token}", room_channel(room), left, EMPTY_ROOM_TTL, room]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(text: str) -> tuple[str, int]:
    node, seq, _ = text.split("|", 2)
    return node, int(seq)


@dataclass
class _Op:
    """One command for the writer: a publish, or a script whose result someone awaits."""

    channel: str = ""
    text: str = ""
    script: str = ""
    command: tuple[str, ...] = ()  # a plain command (the node index)
    keys: list[str] = field(default_factory=list)
    args: list[str | int] = field(default_factory=list)
    result: asyncio.Future[Any] | None = None
    size: int = 0  # bytes it holds, against the queue's byte bound


def _packed(batch: list[_Op]) -> list[_Op]:
    """``batch`` with each run of publishes to one channel packed into one publish: the
    order of everything stays as it was queued."""
    out: list[_Op] = []
    run: list[str] = []
    for op in batch:
        if run and (op.script or op.command or op.channel != out[-1].channel):
            out[-1].text = pack(run)
            run = []
        if op.script or op.command:
            out.append(op)
        else:
            if not run:
                out.append(_Op(channel=op.channel))
            run.append(op.text)
    if run:
        out[-1].text = pack(run)
    return out


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
        self._queue: asyncio.Queue[_Op] = asyncio.Queue(QUEUE_LIMIT)
        self._queue_bytes = queue_bytes
        self._queued_bytes = 0
        #: Local joins under way per room (its channel stays subscribed meanwhile).
        self._joining: dict[RoomId, int] = {}
        self._subscribed: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: Leaves Redis did not take (unreachable): sent again when it answers.
        self._unsent_leaves: list[tuple[RoomId, list[str | int]]] = []
        #: Messages published for other nodes, received from them, dropped (queue full);
        #: Redis commands that failed; the last liveness write's round trip (seconds).
        self.published = 0
        self.received = 0
        self.dropped = 0
        self.errors = 0
        self.rtt: float | None = None
        self._alive_at = 0.0
        self._closed = False

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
        await self._redis.sadd(NODES, self.node)
        await self._beat()
        self._tasks = [
            loop.create_task(self._read()),
            loop.create_task(self._write()),
            loop.create_task(self._watch()),
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
        stranded = []
        while not self._queue.empty():
            stranded.append(self._queue.get_nowait())
        self._queued_bytes = 0
        _fail(stranded, ConnectionError("this node's registry is stopped"))
        # Bounded: a stopping node must not hang on a Redis that does not answer.
        redis, pubsub = self._redis, self._pubsub
        if redis is not None:
            await self._quietly(redis.delete(f"mp:node:{self.node}"))
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
        keys = _keys(room)
        args: list[str | int] = [
            peer, self.node, token, join.resume_token or "", self.max_peers,
            room_channel(room), self.node, room,
        ]  # fmt: skip
        # Indexed first, so a node that dies mid-join leaves nothing a sweep cannot find.
        self._index("SADD", room, peer, token)
        result = await self._run(_JOIN, keys, args)
        status = result[0]
        if status != "ok":
            self._index("SREM", room, peer, token)
            return self._refusal(room, peer, status, result)
        seq, replaced = int(result[1]), result[2]
        order = [PeerId(p) for p in result[3::2]]
        snapshot: dict[PeerId, int] = {}
        for other, record in zip(order, result[4::2], strict=True):
            node, other_seq = _record(record)
            view.joined(other, node, other_seq)
            snapshot[other] = other_seq
        if replaced:
            self._ended(view, peer, _record(replaced)[1])
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
        args = _leave_args(room, peer, entry.seq, entry.token, encode(left))
        self._drop_interest(room)
        try:
            await self._run(_LEAVE, _keys(room), args)
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
            self._publish(node_channel(entry.node), encode(message))
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
            self._publish(room_channel(room), encode(message))

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
                self._publish(node_channel(holder), encode(probe))
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
            _stop_if_cancelled()
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

    # -- nodes that die -------------------------------------------------------------------
    async def _beat(self) -> None:
        assert self._redis is not None
        started = time.monotonic()
        await self._redis.set(f"mp:node:{self.node}", "1", px=int(NODE_TTL * 1000))
        self._alive_at = time.monotonic()
        self.rtt = self._alive_at - started

    def cluster_stats(self) -> ClusterStats:
        return ClusterStats(
            node=self.node,
            redis_up=time.monotonic() - self._alive_at < 2 * HEARTBEAT + 1,
            redis_rtt=self.rtt,
            published=self.published,
            received=self.received,
            dropped=self.dropped,
            errors=self.errors,
        )

    async def _watch(self) -> None:
        """Keep this node alive in Redis; end the members of nodes that are not."""
        swept_at = 0.0
        reconcile_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            _stop_if_cancelled()
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._beat()
                if not await self._redis_knows_us():
                    await self._restore()
                    reconcile_at = loop.time() + RECONCILE_AFTER
                if reconcile_at is not None and loop.time() >= reconcile_at:
                    reconcile_at = None
                    await self._reconcile()
                while self._unsent_leaves:
                    room, args = self._unsent_leaves[0]
                    await self._run(_LEAVE, _keys(room), args)
                    self._unsent_leaves.pop(0)
                if loop.time() - swept_at >= SWEEP_EVERY:
                    swept_at = loop.time()
                    await self._sweep()
            except Exception as exc:
                self.errors += 1
                log.warning("node liveness check failed: %r", exc)

    async def _redis_knows_us(self) -> bool:
        assert self._redis is not None
        return bool(await self._redis.sismember(NODES, self.node))

    async def _restore(self) -> None:
        """Redis lost this node (restarted empty, or it took us for dead): put our members
        back, with their memberships as they were; one whose ID someone else took since
        is closed (it rejoins)."""
        assert self._redis is not None
        await self._redis.sadd(NODES, self.node)
        restored = 0
        for room, view in list(self._views.items()):
            for peer, entry in list(view.members.items()):
                if entry.conn is None:
                    continue
                args: list[str | int] = [
                    peer, self.node, entry.seq, entry.token, room_channel(room), room,
                ]  # fmt: skip
                self._index("SADD", room, peer, entry.token)
                outcome = await self._run(_RESTORE, _keys(room), args)
                if outcome == "superseded":
                    self._ended(view, peer, entry.seq)
                restored += outcome == "restored"
        log.warning("Redis had lost node %s: %d member(s) restored", self.node, restored)

    async def _reconcile(self) -> None:
        """After a restore, once the other nodes have had time to restore theirs: members
        this node still shows that Redis does not have are gone (their node died meanwhile)."""
        assert self._redis is not None
        for room, view in list(self._views.items()):
            records = await self._redis.hgetall(_keys(room)[0])
            present = {_text(k): _record(_text(v))[1] for k, v in records.items()}
            for peer, entry in list(view.members.items()):
                if entry.conn is None and present.get(peer) != entry.seq:
                    log.info("%r in room %r did not come back after Redis did", peer, room)
                    self._ended(view, peer, entry.seq)

    async def _sweep(self) -> None:
        redis = self._redis
        assert redis is not None
        for node in map(_text, await redis.smembers(NODES)):
            if node == self.node or await redis.exists(f"mp:node:{node}"):
                continue
            if not await redis.set(f"mp:sweep:{node}", self.node, nx=True, px=10_000):
                continue  # another survivor is on it
            members = [_text(m) for m in await redis.smembers(f"mp:node:{node}:m")]
            for item in members:
                room_name, peer_name, _ = item.split("\x1f", 2)
                room, peer = RoomId(room_name), PeerId(peer_name)
                record = await redis.hget(_keys(room)[0], peer)
                if record is None:
                    continue
                owner, seq, token = _text(record).split("|", 2)
                if owner != node:
                    continue
                left = encode(Envelope(Kind.LEFT, self.node, room, peer, seq=int(seq)))
                args = _leave_args(room, peer, int(seq), token, left)
                await self._run(_LEAVE, _keys(room), args)
            await redis.delete(f"mp:node:{node}:m")
            await redis.srem(NODES, node)
            log.warning("node %s stopped answering: its %d member(s) left", node, len(members))

    # -- the one way out -------------------------------------------------------------------
    def _index(self, verb: str, room: RoomId, peer: PeerId, token: str) -> None:
        """Add to or remove from this node's index of its memberships (for sweeping it if it
        dies). Outside the scripts: a script touches only its room's keys, one hash slot,
        as Redis Cluster requires. Each membership's entry carries its token, so removing
        one never removes another of the same peer."""
        entry = f"{room}\x1f{peer}\x1f{token}"
        op = _Op(command=(verb, f"mp:node:{self.node}:m", entry), size=len(entry.encode()))
        if not self._enqueue(op):
            self.dropped += 1

    def _publish(self, channel: str, text: str) -> None:
        size = len(text) if text.isascii() else len(text.encode())
        if self._enqueue(_Op(channel=channel, text=text, size=size)):
            self.published += 1
        else:
            self.dropped += 1
            log.warning("Redis is %s behind: dropping a message", self._backlog())

    async def _run(self, script: str, keys: list[str], args: list[str | int]) -> Any:
        if not self._tasks or self._tasks[1].done():
            raise ConnectionError("this node's registry is stopped")
        result = asyncio.get_running_loop().create_future()
        size = sum(len(str(arg).encode()) for arg in args)
        if not self._enqueue(_Op(script=script, keys=keys, args=args, result=result, size=size)):
            raise ConnectionError(f"Redis is {self._backlog()} behind")
        return await result

    def _enqueue(self, op: _Op) -> bool:
        """Queue ``op`` for the writer; False when the queue is full, by count or by bytes
        (an empty queue takes an op of any size)."""
        queued = self._queued_bytes
        if (queued and queued + op.size > self._queue_bytes) or self._queue.full():
            return False
        self._queue.put_nowait(op)
        self._queued_bytes = queued + op.size
        return True

    def _backlog(self) -> str:
        return f"{self._queue.qsize()} commands ({self._queued_bytes} bytes)"

    async def _write(self) -> None:
        assert self._redis is not None
        while True:
            _stop_if_cancelled()
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._queued_bytes -= sum(op.size for op in batch)
            batch = _packed(batch)
            pipe = self._redis.pipeline(transaction=False)
            for op in batch:
                if op.script:  # EVAL: works on a restarted Redis too (no NOSCRIPT)
                    pipe.eval(op.script, len(op.keys), *op.keys, *op.args)
                elif op.command:
                    pipe.execute_command(*op.command)
                else:
                    pipe.publish(op.channel, op.text)
            try:
                results = await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:  # closing: nobody may wait forever for these
                _fail(batch, ConnectionError("this node's registry is stopped"))
                raise
            except Exception as exc:
                self.errors += 1
                log.error("Redis pipeline failed: %r", exc)
                results = [exc] * len(batch)
            for op, outcome in zip(batch, results, strict=True):
                if op.result is not None and not op.result.done():
                    if isinstance(outcome, Exception):
                        op.result.set_exception(outcome)
                    else:
                        op.result.set_result(outcome)


def _stop_if_cancelled() -> None:
    """redis-py can swallow a cancellation (its connection clean-up catches it): a loop
    that carried on would keep its task, and close(), waiting."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _fail(ops: list[_Op], error: Exception) -> None:
    for op in ops:
        if op.result is not None and not op.result.done():
            op.result.set_exception(error)
