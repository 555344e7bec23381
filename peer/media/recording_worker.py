"""What both kinds of recording visit share: one writer thread behind a bounded queue.

The event loop only queues (``_put``, never blocking: False when full); the thread owns the
files, takes each item in order (``_take``), does what waiting allows (``_idle``, about
every 0.1 s) and, however it ends, closes the files (``_close``) and lets go of them
(``_forget``), so a visit that failed or finished holds nothing. Every recorder (the room's
too) opens its file with :func:`open_matroska` and, where it encodes, ends it with
:func:`close_matroska`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import av
import av.container

from signaling.protocol import PeerId

log = logging.getLogger(__name__)


def open_matroska(path: Path, format: str = "matroska") -> av.container.OutputContainer:
    """``path`` opened for writing in clusters of at most 1 s, flushed as written: a process
    killed outright (no chance to finalise) still leaves a playable file missing at most its
    last second."""
    return av.open(
        str(path),
        "w",
        format=format,
        options={"flush_packets": "1", "cluster_time_limit": "1000"},
    )


def close_matroska(
    container: av.container.OutputContainer,
    streams: Iterable[av.VideoStream | av.AudioStream | None],
) -> None:
    """Write what each encoder still holds (a failing one is logged, the rest go on), then
    close the file."""
    for stream in streams:
        if stream is not None:
            try:
                container.mux(stream.encode(None))
            except av.FFmpegError:
                log.exception("flushing the %s encoder failed", stream.type)
    container.close()


_FINISH = object()
#: Seconds the thread lets items gather once it has written all it had: about 5 wake-ups
#: a second instead of one per packet (each costs the GIL's hand-over; 50 ms cost 5-7% more
#: of a one-stream recorder's CPU); a file is at most this much behind.
BATCH = 0.2


class RecordingWorker:
    """One peer's visit: a bounded queue from the event loop to one writer thread.

    A subclass sets its own fields, then calls :meth:`_start_worker`.
    """

    def __init__(self, peer: PeerId, *, queue_size: int) -> None:
        self.peer = peer
        self.failed = False  # the files could not be written: later items are ignored
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._finishing = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"recorder {peer}", daemon=True)

    def _start_worker(self) -> None:
        self._thread.start()

    # --- event loop side -------------------------------------------------------------------

    def _put(self, item: object) -> bool:
        """Queues ``item`` for the thread; False (nothing queued) when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def finish(self) -> None:
        """Asks the worker to write what is queued and close the files; returns at once."""
        self._finishing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_FINISH)

    @property
    def done(self) -> bool:
        """The worker has closed the files (or given up) and ended."""
        return self._done.is_set()

    # --- worker thread ---------------------------------------------------------------------

    def _take(self, item: object) -> None:
        raise NotImplementedError

    def _idle(self, now: float) -> None:
        """Nothing came for 0.1 s."""

    def _close(self) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop the files and what is held for them, whoever still holds the visit."""

    def _run(self) -> None:
        try:
            self._consume()
        except Exception:
            self.failed = True
            log.exception("recording %s failed", self.peer)
        finally:
            try:
                self._close()
            except Exception:
                log.exception("finalising the recording of %s failed", self.peer)
            self._forget()
            self._done.set()

    def _consume(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._finishing.is_set():
                    return
                self._idle(time.monotonic())
                continue
            if item is _FINISH:
                return
            self._take(item)
            if self._queue.empty():
                # Let the next items gather: one wake-up per batch instead of one per
                # packet (a put then finds no thread waiting to be woken); finish() cuts
                # it short.
                self._finishing.wait(BATCH)
