"""A labelled mosaic of every remote video track's latest frame, for --display and --snapshot.

One tile per video track: a peer's first (its camera) is labelled with its name and stays
across its connections; a further one (a screen share: ``RemoteTrack.index`` 1) is its own
tile, "name (2)", gone when that track ends.

The ``--display`` window that shows it is :mod:`peer.media.display`. With ``indicators``
(the window's and the snapshot's mosaic, not the room recording's) each tile also shows
who is speaking and who is muted (:mod:`peer.media.levels`): a level bar at its left edge
from each audio frame's loudness, a green ring while above the speaking level, and red
"mic off" / "cam off" markers. Our own tile's markers are what we chose
(``set_local_muted``), not guessed from silence.

``Mosaic.put_frame`` only keeps a reference to the newest frame and counts it: frames are
converted to BGR at render time, for the latest frame of each tile only, with the
mosaic's own reformatter (a frame's built-in one is shared with every other thread that
converts it, which is how shared frames crash). Rendering and file/GUI work happen in
threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import av
import cv2
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter

from peer.events import Kind, RemoteTrack
from peer.media.levels import QUIET_AFTER, LevelMeter, dbfs, is_black
from peer.media.tap import FpsMeter, FrameConsumer, SizeGuard
from signaling.protocol import PeerId

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
VideoInput = av.VideoFrame | Image  # an aiortc frame or a BGR array (H, W, 3)

_BACKGROUND = (24, 24, 24)
_EMPTY_TILE = (56, 56, 56)
_LABEL_STRIP = (0, 0, 0)
_TEXT = (255, 255, 255)
_LEVEL = (60, 200, 60)  # the level bar and the speaking ring
_MARKER = (40, 40, 220)  # "mic off", "cam off"
_LOCAL_KEY = ("\x00local", 0)  # cannot collide with a peer ID, which is printable
TileKey = tuple[str, int]  # (peer, RemoteTrack.index)


def grid(count: int) -> tuple[int, int]:
    """(columns, rows) for ``count`` tiles: the squarest grid, filled row by row."""
    if count <= 0:
        return (1, 1)
    columns = math.ceil(math.sqrt(count))
    return columns, math.ceil(count / columns)


def fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest even (width, height) with ``size``'s aspect ratio inside ``box``."""
    width, height = size
    scale = min(box[0] / width, box[1] / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


@dataclass
class _Tile:
    label: str
    frame: VideoInput | None = None
    meter: FpsMeter = field(default_factory=FpsMeter)
    audio: LevelMeter | None = None  # None: no audio track (now)
    video_at: float | None = None  # when the newest picture came
    cached_for: VideoInput | None = None
    cached: Image | None = None
    cached_black: bool = False


@dataclass(frozen=True)
class _Marks:
    """What a tile shows besides its picture, read under the lock at render time."""

    level: float
    speaking: bool
    mic_off: bool
    cam_off: bool  # besides a black picture, found while drawing


class _LocalConsumer(FrameConsumer):
    """Feeds the local preview from a TrackTap on (a relay of) the local video."""

    def __init__(self, mosaic: Mosaic, label: str) -> None:
        self._mosaic = mosaic
        self._label = label

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        if isinstance(frame, av.VideoFrame):
            self._mosaic.put_local_frame(frame, label=self._label)
        else:
            self._mosaic.put_local_audio(frame)

    def track_ended(self, track: RemoteTrack) -> None:
        if track.kind == "video":
            self._mosaic.clear_local()
        else:
            self._mosaic.end_local_audio()


class Mosaic(FrameConsumer):
    """A FrameConsumer keeping each video track's latest frame; ``render()`` tiles them."""

    def __init__(
        self,
        *,
        tile: tuple[int, int] = (320, 240),
        clock: Callable[[], float] = time.monotonic,
        indicators: bool = False,
    ) -> None:
        self.tile = tile
        self.indicators = indicators
        self._clock = clock
        self._local_audio: LevelMeter | None = None  # our microphone, with indicators
        self._local_muted: frozenset[Kind] = frozenset()
        self._tiles: dict[TileKey, _Tile] = {}  # insertion order = display order
        self._lock = threading.Lock()  # guards _tiles between the loop and render threads
        self._render_lock = threading.Lock()  # one render at a time: caches, reformatter
        self._reformatter = VideoReformatter()
        self._sizes = SizeGuard("mosaic")

    # --- FrameConsumer, on the event loop ------------------------------------------------

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame | Image) -> None:
        """Keeps a reference to the newest video frame (or BGR array); converts nothing.
        One over :data:`peer.media.tap.MAX_FRAME_PIXELS` is not kept (warned once a track).
        Audio marks the peer's first tile, and with ``indicators`` moves its level (the
        loudness of each frame: about 20 µs on the loop)."""
        index = track.index if track.kind == "video" else 0
        now = self._clock()
        db = (
            dbfs(frame.to_ndarray())
            if self.indicators and isinstance(frame, av.AudioFrame)
            else None
        )
        with self._lock:
            tile = self._tiles.get((track.peer, index))
            if tile is None:
                label = track.peer if index == 0 else f"{track.peer} ({index + 1})"
                tile = self._tiles[(track.peer, index)] = _Tile(label=label)
            if track.kind == "audio":
                if tile.audio is None:
                    tile.audio = LevelMeter()
                if db is not None:
                    tile.audio.update(db, now)
            elif not isinstance(frame, av.AudioFrame) and self._sizes.admits(track, *_size(frame)):
                tile.frame = frame
                tile.video_at = now
                tile.meter.tick(now)

    def track_ended(self, track: RemoteTrack) -> None:
        """A first video track's tile stays (showing the name); a further one's goes."""
        if track.kind != "video":
            with self._lock:
                if self.indicators and (tile := self._tiles.get((track.peer, 0))) is not None:
                    tile.audio = None  # "mic off" from now
            return
        self._sizes.track_ended(track)
        with self._lock:
            if track.index > 0:
                self._tiles.pop((track.peer, track.index), None)
            elif (tile := self._tiles.get((track.peer, 0))) is not None:
                tile.frame = None

    def remove_peer(self, peer: PeerId) -> None:
        """Drop every tile of ``peer`` (it left)."""
        with self._lock:
            self._tiles = {key: t for key, t in self._tiles.items() if key[0] != peer}

    async def peer_closed(self, peer: PeerId, *, gone: bool) -> None:
        """A peer's tile stays (showing its name) across its connections, until it is gone."""
        if gone:
            self.remove_peer(peer)

    # --- the local preview ---------------------------------------------------------------

    def put_local_frame(self, frame: VideoInput, *, label: str = "you") -> None:
        """The newest local frame; the preview is always the first tile."""
        with self._lock:
            tile = self._tiles.get(_LOCAL_KEY)
            if tile is None:
                self._tiles = {_LOCAL_KEY: _Tile(label=label), **self._tiles}
                tile = self._tiles[_LOCAL_KEY]
            tile.label = label
            tile.frame = frame
            tile.video_at = self._clock()
            tile.meter.tick(tile.video_at)

    def put_local_audio(self, frame: av.AudioFrame) -> None:
        """Our microphone's newest frame: its level on our tile (with ``indicators``)."""
        if not self.indicators:
            return
        db = dbfs(frame.to_ndarray())
        with self._lock:
            if self._local_audio is None:
                self._local_audio = LevelMeter()
            self._local_audio.update(db, self._clock())

    def end_local_audio(self) -> None:
        """Our microphone has stopped: our tile shows no level rather than its last one."""
        with self._lock:
            self._local_audio = None

    def set_local_muted(self, muted: frozenset[Kind]) -> None:
        """The kinds we stopped sending (``Agent.mute``): our tile's markers."""
        with self._lock:
            self._local_muted = muted

    def local_consumer(self, label: str = "you") -> FrameConsumer:
        """A consumer for ``TrackTap(own_id, relay.subscribe(local.video), [it])``."""
        return _LocalConsumer(self, label)

    def clear_local(self) -> None:
        """Drop the preview tile of our own video."""
        with self._lock:
            self._tiles.pop(_LOCAL_KEY, None)

    def peers(self) -> list[PeerId]:
        """The remote peers with a tile, in the order they got one."""
        with self._lock:
            return list(dict.fromkeys(PeerId(key[0]) for key in self._tiles if key != _LOCAL_KEY))

    def labels(self) -> list[str]:
        """The tiles' labels, in display order (the local preview's first)."""
        with self._lock:
            return [tile.label for tile in self._tiles.values()]

    # --- rendering, in any thread --------------------------------------------------------

    def render(self) -> Image:
        """The BGR mosaic: one labelled tile per video track (local preview first), with fps."""
        now = self._clock()
        with self._lock:
            tiles = list(self._tiles.items())
            rates = {key: t.meter.rate(now) for key, t in tiles}
            marks = {key: self._marks(key, t, now) for key, t in tiles}
        tile_w, tile_h = self.tile
        columns, rows = grid(len(tiles))
        canvas = np.full((rows * tile_h, columns * tile_w, 3), _BACKGROUND, dtype=np.uint8)
        if not tiles:
            _caption(canvas, "waiting for peers", (0, 0), self.tile)
            return canvas
        with self._render_lock:
            for index, (key, tile) in enumerate(tiles):
                x, y = (index % columns) * tile_w, (index // columns) * tile_h
                view = canvas[y : y + tile_h, x : x + tile_w]
                picture = view[: tile_h - _strip_height(tile_h)]
                self._draw_tile(picture, tile)
                if self.indicators:
                    _draw_marks(picture, marks[key], black=tile.cached_black)
                local = key == _LOCAL_KEY
                label = f"{tile.label} (local)" if local else tile.label
                audio = "" if local or tile.audio is None else " +audio"
                _label(view, f"{label}  {rates[key]:.0f} fps{audio}")
        return canvas

    def _marks(self, key: TileKey, tile: _Tile, now: float) -> _Marks:
        """A tile's level and markers (under ``_lock``). A remote peer's microphone is off
        when nothing audible came for a while (``LevelMeter.quiet``); ours, when we said so."""
        local = key == _LOCAL_KEY
        meter = self._local_audio if local else tile.audio
        stale = tile.video_at is None or now - tile.video_at > QUIET_AFTER
        if local:
            mic_off = meter is None or "audio" in self._local_muted
            cam_off = tile.frame is None or "video" in self._local_muted
        else:
            mic_off = meter is None or meter.quiet(now)
            cam_off = tile.frame is None or stale
        level = 0.0 if meter is None or mic_off else meter.value(now)
        return _Marks(
            level, level > 0 and meter is not None and meter.speaking(now), mic_off, cam_off
        )

    def _draw_tile(self, view: Image, tile: _Tile) -> None:
        frame = tile.frame
        tile_h, tile_w = view.shape[:2]
        if frame is None:
            view[:] = _EMPTY_TILE
            _caption(view, "no video", (0, 0), (tile_w, tile_h))
            return
        if tile.cached_for is not frame or tile.cached is None:
            tile.cached = self._scaled(frame, (tile_w, tile_h))
            tile.cached_for = frame
            tile.cached_black = self.indicators and is_black(tile.cached[::4, ::4])
        image = tile.cached
        top = (tile_h - image.shape[0]) // 2
        left = (tile_w - image.shape[1]) // 2
        view[top : top + image.shape[0], left : left + image.shape[1]] = image

    def _scaled(self, frame: VideoInput, box: tuple[int, int]) -> Image:
        if isinstance(frame, av.VideoFrame):
            width, height = fit((frame.width, frame.height), box)
            bgr = self._reformatter.reformat(frame, width=width, height=height, format="bgr24")
            return cast(Image, bgr.to_ndarray())
        width, height = fit((frame.shape[1], frame.shape[0]), box)
        return cast(Image, cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))


def _size(frame: VideoInput) -> tuple[int, int]:
    """(width, height) of an aiortc frame or a BGR array."""
    if isinstance(frame, av.VideoFrame):
        return frame.width, frame.height
    return frame.shape[1], frame.shape[0]


def _strip_height(tile_height: int) -> int:
    """The label strip under each tile's picture (it never covers the picture)."""
    return max(18, tile_height // 10)


def _draw_marks(view: Image, marks: _Marks, *, black: bool) -> None:
    """The level bar (left edge, from the bottom), the speaking ring and the markers."""
    height, width = view.shape[:2]
    bar = max(4, width // 40)
    if marks.level > 0:
        top = height - max(1, round(marks.level * height))
        view[top:, :bar] = _LEVEL
    if marks.speaking:
        cv2.rectangle(view, (0, 0), (width - 1, height - 1), _LEVEL, max(3, width // 80))
    if marks.mic_off:
        _marker(view, "mic off", right=False)
    if marks.cam_off or black:
        _marker(view, "cam off", right=True)


def _marker(view: Image, text: str, *, right: bool) -> None:
    """A red box with white text in a top corner of the picture."""
    height, width = view.shape[:2]
    box_h = max(14, height // 9)
    scale = box_h / 30
    (text_w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    box_w = text_w + box_h // 2
    left = width - box_w - 4 if right else max(4, width // 40) + 4
    view[4 : 4 + box_h, left : left + box_w] = _MARKER
    origin = (left + box_h // 4, 4 + box_h * 3 // 4)
    cv2.putText(view, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, _TEXT, 1, cv2.LINE_AA)


def _label(view: Image, text: str) -> None:
    height = view.shape[0]
    strip = _strip_height(height)
    view[height - strip :, :] = _LABEL_STRIP
    scale = strip / 40
    cv2.putText(
        view,
        text,
        (6, height - strip // 4 - 2),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        _TEXT,
        1,
        cv2.LINE_AA,
    )


def _caption(view: Image, text: str, origin: tuple[int, int], box: tuple[int, int]) -> None:
    scale = box[1] / 400
    (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = origin[0] + (box[0] - text_w) // 2
    y = origin[1] + (box[1] + text_h) // 2
    cv2.putText(view, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, _TEXT, 1, cv2.LINE_AA)


# --- --snapshot --------------------------------------------------------------------------


def save_snapshot(mosaic: Mosaic, path: Path) -> None:
    """Renders and writes a PNG atomically (a reader never sees half a file). Blocking."""
    ok, encoded = cv2.imencode(".png", mosaic.render())
    if not ok:
        raise OSError(f"cannot encode a PNG for {path}")
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(encoded.tobytes())
    os.replace(partial, path)


class SnapshotWriter:
    """Writes the mosaic to ``path`` every ``interval`` seconds, and once more on stop."""

    def __init__(self, mosaic: Mosaic, path: Path, *, interval: float = 5.0) -> None:
        self.mosaic = mosaic
        self.path = path
        self.interval = interval
        self.written = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"snapshots {self.path}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self._write()

    async def _run(self) -> None:
        while True:
            await self._write()
            await asyncio.sleep(self.interval)

    async def _write(self) -> None:
        try:
            await asyncio.to_thread(save_snapshot, self.mosaic, self.path)
            self.written += 1
        except OSError as exc:
            log.warning("cannot write the snapshot %s: %s", self.path, exc)
