"""Records each remote peer to its own Matroska file, audio and video together, off the loop.

Two ways, one :class:`Recorder`, one visit (a worker thread, its files) per peer:

- **Packets** (the default): the encoded frames as they came (VP8 or H.264, Opus), every
  track of the peer as its own stream, nothing decoded or encoded:
  :mod:`peer.media.packet_recorder` (``PacketVisit``).
- **Transcoding** (``Recorder(transcode=True)``, ``--record-transcode``): the decoded
  frames of each peer's first track of each kind, encoded again into one fixed format:
  :mod:`peer.media.transcode_recorder` (``TranscodingVisit``).

Both are crash safe: a process killed outright leaves files that play to their last second.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import logging
import re
import time
from pathlib import Path

import av

from peer.events import RemoteTrack
from peer.media.errors import MediaError
from peer.media.packet_recorder import PacketVisit
from peer.media.packets import EncodedFrame, Want
from peer.media.tap import FrameConsumer, Kind, SizeGuard
from peer.media.transcode_recorder import TranscodingVisit, recording_format
from signaling.protocol import PeerId

log = logging.getLogger(__name__)

_FINISH_AT_EXIT_TIMEOUT = 10.0

#: One peer's visit: its packets (:class:`PacketVisit`) or transcoded (:class:`TranscodingVisit`).
Visit = TranscodingVisit | PacketVisit


class Recorder(FrameConsumer):
    """Writes one file per remote peer and visit into ``directory``: a frame consumer and a
    packet consumer of the agent's sinks (``Agent(recorder=...)``).

    By default it writes each peer's encoded frames as they came (``put_packet``), every
    track of the peer as a stream of its file (:mod:`peer.media.packet_recorder`); a track
    that arrives once the file is written goes on in the next segment (``...-part2.mkv``).
    With ``transcode=True`` it decodes and encodes again instead (``put_frame``): each
    peer's first track of each kind only (``RemoteTrack.index == 0``: the camera and the
    microphone), in one fixed format (:func:`recording_format`).

    Transcoding, pictures over :data:`peer.media.tap.MAX_FRAME_PIXELS` are left out (one
    warning per track): a remote peer picks its size, and each such frame queued costs tens
    of MB. Frames given to ``put_frame`` come out unmodified (they are shared with other
    consumers).

    A visit is forgotten once its files are closed: for peers that come and go the recorder
    keeps only the names of the files, for ``files()`` and ``close()``.

    ``wants`` tells the agent's sinks which of the two it takes, so a packet recorder makes
    nobody decode (:mod:`peer.media.packets`).
    """

    def __init__(
        self,
        directory: Path,
        *,
        session: str = "",
        queue_size: int | None = None,
        transcode: bool = False,
    ) -> None:
        self.directory = directory
        self.session = session
        self.transcode = transcode
        self.wants = Want.FRAMES if transcode else Want.PACKETS
        # Packets are small and come about 80 a second (30 video, 50 Opus): 4 s of them.
        self._queue_size = queue_size or (120 if transcode else 320)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MediaError(f"cannot create the recording directory {directory}: {exc}") from exc
        self._active: dict[PeerId, Visit] = {}
        self._finishing: dict[PeerId, list[Visit]] = {}  # retired, not released yet
        self._expected: dict[PeerId, set[Kind]] = {}
        # Every visit's first file, in the order the visits started, with the files the
        # visit wrote once it is released (until then its visit knows).
        self._files: dict[Path, list[Path] | None] = {}
        self._unreported: dict[PeerId, Path] = {}  # a released file close_peer() has to return
        self._visit_counts: dict[PeerId, int] = {}
        self._sizes = SizeGuard("recorder")
        self._closed = False
        atexit.register(self._finish_at_exit)  # Ctrl-C past the agent's own shutdown

    def expect(self, peer: PeerId, kinds: set[Kind]) -> None:
        """Which tracks this peer will send: its file opens once a frame of each arrived."""
        self._expected[peer] = set(kinds)
        visit = self._active.get(peer)
        if visit is not None and not visit.opened:
            visit.expected = set(kinds)

    def track_started(self, track: RemoteTrack) -> None:
        """A remote track began: packets mode opens (or extends) its peer's file."""
        if self._closed or self.transcode:
            return
        visit = self._active.get(track.peer)
        if visit is None:
            visit = self._start(track.peer)
        visit.track_started(track)

    def put_packet(self, track: RemoteTrack, packet: EncodedFrame) -> None:
        """An encoded frame of ``track`` (the packet recorder's input)."""
        if self._closed or self.transcode:
            return
        visit = self._active.get(track.peer)
        if visit is None:
            visit = self._start(track.peer)
        if isinstance(visit, PacketVisit):
            visit.offer(track, packet)

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        """A decoded frame, for the transcoding mode (each peer's first track of a kind)."""
        if self._closed or not self.transcode or track.index != 0:
            return
        if isinstance(frame, av.VideoFrame) and not self._sizes.admits(
            track, frame.width, frame.height
        ):
            return
        visit = self._active.get(track.peer)
        if visit is None:
            visit = self._start(track.peer)
        if isinstance(visit, TranscodingVisit):
            visit.offer(track.kind, frame, track.sender_clock)

    def track_ended(self, track: RemoteTrack) -> None:
        """A remote track ended: its stream ends; the file is finalised with its peer's last."""
        if self.transcode:
            if track.index != 0:
                return
            self._sizes.track_ended(track)
        visit = self._active.get(track.peer)
        if visit is None:
            return
        visit.track_ended(track)
        if visit.all_ended():
            self._retire(track.peer)

    async def close_peer(self, peer: PeerId) -> Path | None:
        """Finalises ``peer``'s current file; its next frame starts a new one."""
        self._retire(peer)
        self._expected.pop(peer, None)
        for visit in list(self._finishing.get(peer, [])):
            await asyncio.to_thread(visit.wait)
            self._release(visit)
        path = self._unreported.pop(peer, None)
        return path if path is not None and path.exists() else None

    async def peer_closed(self, peer: PeerId, *, gone: bool) -> None:
        """A connection closed: its file is finished, whether the peer comes back or not."""
        await self.close_peer(peer)

    async def close(self) -> list[Path]:
        """Finalises every file; returns all files this recorder wrote."""
        self._closed = True
        for peer in list(self._active):
            self._retire(peer)
        finishing = [visit for visits in self._finishing.values() for visit in visits]
        for visit in finishing:
            await asyncio.to_thread(visit.wait)
            self._release(visit)
        self._unreported.clear()
        atexit.unregister(self._finish_at_exit)
        return self.files()

    def files(self) -> list[Path]:
        """The files written so far (and being written), in the order the visits started."""
        live = itertools.chain(self._active.values(), *self._finishing.values())
        by_first = {visit.path: visit for visit in live}
        found: list[Path] = []
        for first, written in self._files.items():
            visit = by_first.get(first)
            paths = visit.files() if visit is not None else written or []
            found.extend(path for path in paths if path.exists())
        return found

    def _start(self, peer: PeerId) -> Visit:
        number = self._visit_counts.get(peer, 0) + 1
        self._visit_counts[peer] = number
        path = self._path_for(peer, number)
        visit: Visit
        if self.transcode:
            expected = self._expected.get(peer, set())
            visit = TranscodingVisit(peer, path, expected, queue_size=self._queue_size)
        else:
            visit = PacketVisit(
                peer,
                functools.partial(_segment_path, path),
                self._expected.get(peer, set()),
                queue_size=self._queue_size,
            )
        self._active[peer] = visit
        self._files[visit.path] = None
        self._release_done()
        return visit

    def _path_for(self, peer: PeerId, number: int) -> Path:
        safe_peer = re.sub(r"[^A-Za-z0-9_.-]", "_", peer)[:64] or "peer"
        prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", self.session) + "-" if self.session else ""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        suffix = recording_format().suffix
        path = self.directory / f"{prefix}{safe_peer}-{stamp}-{number}{suffix}"
        extra = 1
        while path.exists() or path in self._files:
            extra += 1
            path = self.directory / f"{prefix}{safe_peer}-{stamp}-{number}.{extra}{suffix}"
        return path

    def _retire(self, peer: PeerId) -> None:
        visit = self._active.pop(peer, None)
        if visit is not None:
            visit.finish()
            self._finishing.setdefault(peer, []).append(visit)
        self._release_done()

    def _release(self, visit: Visit) -> None:
        """Forgets a visit whose worker ended, keeping only whether its file was written."""
        visits = self._finishing.get(visit.peer, [])
        if visit not in visits:
            return  # released already
        visits.remove(visit)
        if not visits:
            del self._finishing[visit.peer]
        written = visit.files()
        self._files[visit.path] = written
        if written:
            self._unreported[visit.peer] = written[-1]

    def _release_done(self) -> None:
        for visit in [v for visits in self._finishing.values() for v in visits if v.done]:
            self._release(visit)

    def _finish_at_exit(self) -> None:
        """Interpreter exit without close(): still write every file's end."""
        self._closed = True
        for peer in list(self._active):
            self._retire(peer)
        for visits in self._finishing.values():
            for visit in visits:
                visit.wait(_FINISH_AT_EXIT_TIMEOUT)


def _segment_path(first: Path, number: int) -> Path:
    """The ``number``-th file of a visit whose first file is ``first``."""
    return first if number == 1 else first.with_name(f"{first.stem}-part{number}{first.suffix}")
