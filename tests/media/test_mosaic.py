"""Mosaic rendering from frames, snapshots, and the --display window under Xvfb."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from peer.media.mosaic import Mosaic, SnapshotWriter, grid, save_snapshot
from peer.media.tap import TrackTap
from signaling.protocol import PeerId
from tests.media.clips import FramesTrack, audio_frame, oversized_frame, remote, video_frame
from tests.support import seconds
from tests.xvfb import x_tool

REPO = Path(__file__).resolve().parents[2]
TILE = (160, 120)
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200),
           (40, 200, 200), (120, 120, 240)]  # fmt: skip


def _solid(colour: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    return np.full((240, 320, 3), colour, dtype=np.uint8)


def _tiles(image: npt.NDArray[np.uint8], count: int) -> list[npt.NDArray[np.uint8]]:
    columns, _ = grid(count)
    width, height = TILE
    return [
        image[
            (i // columns) * height : (i // columns + 1) * height,
            (i % columns) * width : (i % columns + 1) * width,
        ]
        for i in range(count)
    ]


@pytest.mark.parametrize("peers", range(1, 8))
def test_layout_labels_and_content_for_1_to_7_peers(peers: int) -> None:
    mosaic = Mosaic(tile=TILE)
    for index in range(peers):
        frame = _solid(COLOURS[index])
        # a real yuv420p frame for odd peers, a BGR array for even ones: both render
        as_frame = video_frame(320, 240, pts=0, time_base=Fraction(1, 90_000), value=0)
        mosaic.put_frame(remote(f"peer-{index}", "video"), as_frame if index % 2 else frame)
    image = mosaic.render()
    columns, rows = grid(peers)
    assert image.shape == (rows * TILE[1], columns * TILE[0], 3)
    tiles = _tiles(image, peers)
    for index, tile in enumerate(tiles):
        body, strip = tile[: TILE[1] * 3 // 4], tile[TILE[1] - 10 :]
        if index % 2 == 0:  # the frame fills the body of its own tile
            assert np.abs(body[20:60, 20:140].astype(int) - COLOURS[index]).max() < 8
        assert (strip > 200).any(), f"no label text in tile {index}"
    labels = [tile[TILE[1] - 14 :, :80] for tile in tiles]
    for a in range(peers):  # every label differs (peer-0, peer-1, ...)
        for b in range(a + 1, peers):
            assert not np.array_equal(labels[a], labels[b])
    assert mosaic.peers() == [PeerId(f"peer-{i}") for i in range(peers)]


def test_local_preview_comes_first_and_peers_can_leave() -> None:
    mosaic = Mosaic(tile=TILE)
    mosaic.put_frame(remote("bob", "video"), _solid(COLOURS[1]))
    mosaic.put_frame(remote("carol", "audio"), audio_frame(0))
    mosaic.put_local_frame(_solid(COLOURS[0]), label="me")
    image = mosaic.render()
    assert image.shape == (2 * TILE[1], 2 * TILE[0], 3)
    local, bob, carol = _tiles(image, 3)
    assert np.abs(local[30:60, 30:120].astype(int) - COLOURS[0]).max() < 8
    assert np.abs(bob[30:60, 30:120].astype(int) - COLOURS[1]).max() < 8
    body = carol[: TILE[1] * 3 // 4]
    assert np.median(body) == 56  # the empty tile...
    assert (body > 200).any()  # ...saying "no video"
    mosaic.remove_peer(PeerId("bob"))
    mosaic.remove_peer(PeerId("carol"))
    assert mosaic.peers() == []
    assert mosaic.render().shape == (TILE[1], TILE[0], 3)  # the preview alone
    mosaic.clear_local()
    empty = mosaic.render()
    assert (empty > 200).any()  # "waiting for peers"


def test_fps_is_shown_and_conversion_happens_at_render_time_only() -> None:
    now = [0.0]
    mosaic = Mosaic(tile=TILE, clock=lambda: now[0])
    frames = [video_frame(320, 240, pts=i, time_base=Fraction(1, 30)) for i in range(60)]
    for index, frame in enumerate(frames):
        now[0] = index / 30
        mosaic.put_frame(remote("bob", "video"), frame)
    fast = mosaic.render()
    first_tile = mosaic._tiles[("bob", 0)].cached
    again = mosaic.render()
    assert mosaic._tiles[("bob", 0)].cached is first_tile  # same frame: not converted again
    assert np.array_equal(fast, again)
    now[0] += 10  # no frame for 10 s: the label now reads 0 fps
    stale = mosaic.render()
    strip = slice(TILE[1] - 14, TILE[1]), slice(0, TILE[0])
    assert not np.array_equal(fast[strip], stale[strip])


async def test_oversized_pictures_are_refused_with_one_warning_per_track(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pictures over MAX_FRAME_PIXELS are not kept (the tile says "no video"); the other
    tiles go on, and each track is warned about once, not each frame."""
    caplog.set_level(logging.WARNING)
    mosaic = Mosaic(tile=TILE)
    mosaic.put_frame(remote("bob", "video"), _solid(COLOURS[1]))
    for _ in range(2):  # the peer's track, then a new one (after a renegotiation)
        track = FramesTrack([oversized_frame(i * 3000) for i in range(8)])
        tap = TrackTap(remote("huge"), track, [mosaic])
        tap.start()
        deadline = time.monotonic() + seconds(5)
        while tap.frames < 3:
            assert time.monotonic() < deadline, "no frames from the track"
            await asyncio.sleep(0.01)
        bob, huge = _tiles(mosaic.render(), 2)  # while the track still sends
        assert np.abs(bob[30:60, 30:120].astype(int) - COLOURS[1]).max() < 8
        assert np.median(huge[: TILE[1] * 3 // 4]) == 56  # the empty tile: "no video"
        await asyncio.wait_for(tap.wait_ended(), seconds(10))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("4096x2304" in w for w in warnings), warnings


def test_save_snapshot_writes_a_png(tmp_path: Path) -> None:
    mosaic = Mosaic(tile=TILE)
    mosaic.put_frame(remote("bob", "video"), _solid(COLOURS[2]))
    path = tmp_path / "mosaic.png"
    save_snapshot(mosaic, path)
    image = cv2.imread(str(path))
    assert image is not None
    assert np.array_equal(image, mosaic.render())
    assert [p.name for p in tmp_path.iterdir()] == ["mosaic.png"]  # no partial file left


async def test_snapshot_writer_writes_periodically_and_on_stop(tmp_path: Path) -> None:
    mosaic = Mosaic(tile=TILE)
    path = tmp_path / "snap.png"
    writer = SnapshotWriter(mosaic, path, interval=0.05)
    writer.start()
    deadline = time.monotonic() + seconds(10)
    while writer.written < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    mosaic.put_frame(remote("late", "video"), _solid(COLOURS[3]))
    await writer.stop()
    image = cv2.imread(str(path))
    assert image is not None
    assert np.abs(image[30:60, 30:120].astype(int) - COLOURS[3]).max() < 8


# --- the --display window ------------------------------------------------------------------


@pytest.mark.slow
def test_display_window_opens_and_q_closes_it(xvfb: str) -> None:
    title = "meshpeer-display-test"
    env = {**os.environ, "DISPLAY": xvfb}
    window = subprocess.Popen(
        [sys.executable, "-m", "tests.media.show_window", title],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + seconds(30)
        while title not in x_tool(xvfb, "xwininfo", "-root", "-tree"):
            assert window.poll() is None, window.communicate()
            assert time.monotonic() < deadline, "no window in xwininfo -root -tree"
            time.sleep(0.1)
        (window_id, *_) = x_tool(xvfb, "xdotool", "search", "--name", title).split()
        x_tool(xvfb, "xdotool", "key", "--window", window_id, "q")
        stdout, stderr = window.communicate(timeout=seconds(30))
    finally:
        window.kill()
        window.wait()
    assert "closed" in stdout.split(), stderr
    assert window.returncode == 0, stderr


def test_each_video_track_is_a_tile_and_a_further_one_goes_when_it_ends() -> None:
    mosaic = Mosaic(tile=TILE)
    camera, screen = remote("bob"), remote("bob", index=1)
    mosaic.put_frame(camera, _solid(COLOURS[0]))
    mosaic.put_frame(screen, _solid(COLOURS[1]))
    mosaic.put_frame(remote("bob", "audio"), audio_frame(0))
    assert mosaic.labels() == ["bob", "bob (2)"]
    assert mosaic.peers() == [PeerId("bob")]
    image = mosaic.render()
    assert image.shape[:2] == (TILE[1], 2 * TILE[0])
    mosaic.track_ended(screen)
    mosaic.track_ended(camera)  # the first track's tile stays, with the name
    assert mosaic.labels() == ["bob"]
    mosaic.remove_peer(PeerId("bob"))
    assert mosaic.labels() == []
