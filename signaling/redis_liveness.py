"""Which nodes sharing rooms are alive: each keeps a key in Redis that expires unless it
is refreshed, and a survivor ends the members of a node whose key expired.

The node's own registry takes part through :class:`Members`: when Redis has lost this
node (restarted empty, or it took us for dead) the registry puts its members back, and
checks later which of the others' members came back too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import redis.asyncio as aioredis

from signaling.cluster import Envelope, Kind, encode
from signaling.protocol import PeerId, RoomId
from signaling.redis_pipe import CommandPipe, stop_if_cancelled
from signaling.redis_rooms import LEAVE, as_text, leave_args, room_keys

log = logging.getLogger(__name__)

#: The set of nodes sharing rooms (each one's liveness key: ``mp:node:<id>``).
NODES = "mp:nodes"
#: A node refreshes its liveness key every HEARTBEAT seconds; one silent for NODE_TTL is
#: dead, and the first survivor to notice (checking every SWEEP_EVERY) ends its members.
HEARTBEAT = 1.0
NODE_TTL = 5.0
SWEEP_EVERY = 2.0
#: Seconds after restoring into an emptied Redis before checking what others restored.
RECONCILE_AFTER = 3 * HEARTBEAT + 1.0


def node_key(node: str) -> str:
    """The node's liveness key."""
    return f"mp:node:{node}"


def index_key(node: str) -> str:
    """The set of the node's memberships (``room\\x1fpeer\\x1ftoken``), for its sweep."""
    return f"mp:node:{node}:m"


class Members(Protocol):
    """What the liveness loop asks of this node's registry."""

    async def restore(self) -> None:
        """Redis lost this node: put its members back."""

    async def reconcile(self) -> None:
        """After a restore: end the members elsewhere that did not come back."""

    async def resend_leaves(self) -> None:
        """Send the leaves Redis did not take while it was unreachable."""


class Liveness:
    """This node's liveness key, and the sweep of dead nodes."""

    def __init__(self, node: str, pipe: CommandPipe) -> None:
        self.node = node
        self._pipe = pipe
        #: The last liveness write's round trip (seconds); liveness checks that failed.
        self.rtt: float | None = None
        self.errors = 0
        self._alive_at = 0.0

    @property
    def redis_up(self) -> bool:
        return time.monotonic() - self._alive_at < 2 * HEARTBEAT + 1

    async def announce(self, redis: aioredis.Redis) -> None:
        """Join the set of nodes, alive."""
        await redis.sadd(NODES, self.node)
        await self._beat(redis)

    async def _beat(self, redis: aioredis.Redis) -> None:
        started = time.monotonic()
        await redis.set(node_key(self.node), "1", px=int(NODE_TTL * 1000))
        self._alive_at = time.monotonic()
        self.rtt = self._alive_at - started

    async def watch(self, redis: aioredis.Redis, members: Members) -> None:
        """Keep this node alive in Redis; end the members of nodes that are not."""
        swept_at = 0.0
        reconcile_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            stop_if_cancelled()
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._beat(redis)
                if not await redis.sismember(NODES, self.node):
                    await redis.sadd(NODES, self.node)
                    await members.restore()
                    reconcile_at = loop.time() + RECONCILE_AFTER
                if reconcile_at is not None and loop.time() >= reconcile_at:
                    reconcile_at = None
                    await members.reconcile()
                await members.resend_leaves()
                if loop.time() - swept_at >= SWEEP_EVERY:
                    swept_at = loop.time()
                    await self._sweep(redis)
            except Exception as exc:
                self.errors += 1
                log.warning("node liveness check failed: %r", exc)

    async def _sweep(self, redis: aioredis.Redis) -> None:
        for node in map(as_text, await redis.smembers(NODES)):
            if node == self.node or await redis.exists(node_key(node)):
                continue
            if not await redis.set(f"mp:sweep:{node}", self.node, nx=True, px=10_000):
                continue  # another survivor is on it
            members = [as_text(m) for m in await redis.smembers(index_key(node))]
            for item in members:
                room_name, peer_name, _ = item.split("\x1f", 2)
                room, peer = RoomId(room_name), PeerId(peer_name)
                record = await redis.hget(room_keys(room)[0], peer)
                if record is None:
                    continue
                owner, seq, token = as_text(record).split("|", 2)
                if owner != node:
                    continue
                left = encode(Envelope(Kind.LEFT, self.node, room, peer, seq=int(seq)))
                args = leave_args(room, peer, int(seq), token, left)
                await self._pipe.run(LEAVE, room_keys(room), args)
            await redis.delete(index_key(node))
            await redis.srem(NODES, node)
            log.warning("node %s stopped answering: its %d member(s) left", node, len(members))
