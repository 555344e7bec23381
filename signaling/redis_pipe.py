"""The one way out to Redis: everything a node sends (scripts, publishes, index commands)
goes through one bounded queue and one writer task, batched into pipelines on one
connection, in the order it was queued. That order is what keeps a peer's messages in the
order it sent them, whichever nodes they travel between.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from signaling.cluster import pack

log = logging.getLogger(__name__)

#: Commands waiting for Redis; beyond this a node is far behind and drops what it sends.
QUEUE_LIMIT = 65_536
#: Bytes those commands may hold (publishes carry whole frames, up to max_frame_bytes: at the
#: count bound alone, 4 GiB): beyond this, the same. About 2 s of a node's peak traffic.
QUEUE_BYTES = 64 * 1024 * 1024
#: Commands sent in one pipeline (one round trip).
BATCH = 512


@dataclass
class Op:
    """One command for the writer: a publish, or a script whose result someone awaits."""

    channel: str = ""
    text: str = ""
    script: str = ""
    command: tuple[str, ...] = ()  # a plain command (the node index)
    keys: list[str] = field(default_factory=list)
    args: list[str | int] = field(default_factory=list)
    result: asyncio.Future[Any] | None = None
    size: int = 0  # bytes it holds, against the queue's byte bound


def pack_publishes(batch: list[Op]) -> list[Op]:
    """``batch`` with each run of publishes to one channel packed into one publish: the
    order of everything stays as it was queued."""
    out: list[Op] = []
    run: list[str] = []
    for op in batch:
        if run and (op.script or op.command or op.channel != out[-1].channel):
            out[-1].text = pack(run)
            run = []
        if op.script or op.command:
            out.append(op)
        else:
            if not run:
                out.append(Op(channel=op.channel))
            run.append(op.text)
    if run:
        out[-1].text = pack(run)
    return out


class CommandPipe:
    """The queue and its writer. ``start`` it with the node's Redis client; ``stop`` fails
    what is still queued once the writer is cancelled."""

    def __init__(self, queue_bytes: int = QUEUE_BYTES) -> None:
        self._queue: asyncio.Queue[Op] = asyncio.Queue(QUEUE_LIMIT)
        self._queue_bytes = queue_bytes
        self._queued_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        #: Messages published for other nodes, dropped (queue full); pipelines that failed.
        self.published = 0
        self.dropped = 0
        self.errors = 0

    def start(self, redis: aioredis.Redis) -> asyncio.Task[None]:
        self._writer = asyncio.get_running_loop().create_task(self._write(redis))
        return self._writer

    def stop(self) -> None:
        """Fail every command still queued (the writer is stopped): nobody waits forever."""
        stranded = []
        while not self._queue.empty():
            stranded.append(self._queue.get_nowait())
        self._queued_bytes = 0
        fail(stranded, ConnectionError("this node's registry is stopped"))

    def publish(self, channel: str, text: str) -> None:
        size = len(text) if text.isascii() else len(text.encode())
        if self._enqueue(Op(channel=channel, text=text, size=size)):
            self.published += 1
        else:
            self.dropped += 1
            log.warning("Redis is %s behind: dropping a message", self._backlog())

    def command(self, command: tuple[str, ...], size: int) -> None:
        """Queue a plain command whose result nobody awaits (dropped when far behind)."""
        if not self._enqueue(Op(command=command, size=size)):
            self.dropped += 1

    async def run(self, script: str, keys: list[str], args: list[str | int]) -> Any:
        """Run ``script`` in its turn; its result, or the error Redis gave."""
        if self._writer is None or self._writer.done():
            raise ConnectionError("this node's registry is stopped")
        result = asyncio.get_running_loop().create_future()
        size = sum(len(str(arg).encode()) for arg in args)
        if not self._enqueue(Op(script=script, keys=keys, args=args, result=result, size=size)):
            raise ConnectionError(f"Redis is {self._backlog()} behind")
        return await result

    def _enqueue(self, op: Op) -> bool:
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

    async def _write(self, redis: aioredis.Redis) -> None:
        while True:
            stop_if_cancelled()
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._queued_bytes -= sum(op.size for op in batch)
            batch = pack_publishes(batch)
            pipe = redis.pipeline(transaction=False)
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
                fail(batch, ConnectionError("this node's registry is stopped"))
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


def stop_if_cancelled() -> None:
    """redis-py can swallow a cancellation (its connection clean-up catches it): a loop
    that carried on would keep its task, and close(), waiting."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def fail(ops: list[Op], error: Exception) -> None:
    for op in ops:
        if op.result is not None and not op.result.done():
            op.result.set_exception(error)
