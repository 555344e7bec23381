"""The room in one file (issue 19, item 4), from real agents on loopback.

Each bot sends a solid colour (a ``VideoSource`` fed one picture) and the tone of its name
(``tone_frequency``: red 362 Hz, green 515 Hz, blue 741 Hz). A tile is identified by its
content: the colour in the middle of its picture, at the place the mosaic's layout gives
it (``grid``), checked against the name the recorder's mosaic shows there. No OCR.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from peer.agent import Agent
from peer.cli import build_parser, main
from peer.media.capture import VideoSource
from peer.media.mosaic import grid
from peer.media.room_recorder import RoomRecorder
from peer.media.sources import LocalMedia
from peer.media.synthetic import ToneAudioTrack, tone_frequency
from tests.peer.helpers import agents
from tests.support import REPO, RunningServer, eventually, seconds

#: BGR, as the mosaic draws and OpenCV reads.
COLOURS = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0)}
SIZE = (1280, 720)
FPS = 15

Image = npt.NDArray[np.uint8]


def coloured_media(name: str) -> LocalMedia:
    video = VideoSource(width=160, height=120, fps=FPS)
    video.capture(np.full((120, 160, 3), COLOURS[name], np.uint8))
    return LocalMedia(video, ToneAudioTrack(name))


def nearest_colour(image: Image) -> str | None:
    """The bot whose colour ``image`` (a patch) is, or None when it is none of them."""
    mean = image.reshape(-1, 3).mean(axis=0)
    name, distance = min(
        ((n, float(np.linalg.norm(mean - np.array(c)))) for n, c in COLOURS.items()),
        key=lambda item: item[1],
    )
    return name if distance < 80 else None


def tile_colours(image: Image, tiles: int) -> list[str | None]:
    """The colour in the middle of each tile's picture (above its label strip), in order."""
    height, width = image.shape[:2]
    columns, rows = grid(tiles)
    tile_w, tile_h = width // columns, height // rows
    picture_h = tile_h - max(18, tile_h // 10)
    found = []
    for index in range(tiles):
        x = (index % columns) * tile_w + tile_w // 2
        y = (index // columns) * tile_h + picture_h // 2
        found.append(nearest_colour(image[y - 12 : y + 12, x - 12 : x + 12]))
    return found


def tiles_in(path: Path, layouts: Sequence[int]) -> list[tuple[float, dict[int, list[str | None]]]]:
    """For every frame of the file (decoded end to end): its time, and the tile colours it
    shows read as each layout of ``layouts`` tiles. Pictures are not kept (2.7 MB each)."""
    with av.open(str(path)) as container:
        return [
            (frame.time or 0.0, {n: tile_colours(image, n) for n in layouts})
            for frame in container.decode(video=0)
            for image in [np.asarray(frame.to_ndarray(format="bgr24"), np.uint8)]
        ]


def audio_peaks(path: Path, start: float, count: int) -> list[float]:
    """The ``count`` strongest frequencies of the mixed audio from ``start`` s on (at
    least 10 s of it: 0.1 Hz bins), each at least 20 Hz from the others."""
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            if (frame.time or 0.0) >= start:
                channels = len(frame.layout.channels)
                data = frame.to_ndarray().astype(np.float64)
                planar = frame.format.is_planar
                chunks.append(data.mean(axis=0) if planar else data.reshape(-1, channels).mean(1))
    samples = np.concatenate(chunks)
    samples = samples[: 48_000 * (len(samples) // 48_000)]
    assert len(samples) >= 10 * 48_000, f"only {len(samples) / 48_000:.1f} s of audio"
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / 48_000)
    peaks: list[float] = []
    for index in np.argsort(spectrum)[::-1]:
        if all(abs(freqs[index] - p) >= 20 for p in peaks):
            peaks.append(float(freqs[index]))
            if len(peaks) == count:
                break
    return peaks


@pytest.mark.slow
@pytest.mark.timeout(seconds(240))
async def test_three_bots_for_60_s_in_one_file(server: RunningServer, tmp_path: Path) -> None:
    names = ["red", "green", "blue"]
    path = tmp_path / "room.mkv"
    async with agents(server.ws_url, names, media_for=coloured_media):
        recorder = RoomRecorder(path, size=SIZE, fps=FPS)
        started = time.monotonic()
        listener = Agent(server.ws_url, room="test", peer_id="rec", consumers=[recorder])
        try:
            await listener.join()
            await eventually(
                lambda: sorted(recorder.mosaic.labels()) == sorted(names),
                seconds(20),
                "a tile for each bot",
            )
            order = recorder.mosaic.labels()
            all_in = time.monotonic() - started
            await asyncio.sleep(60.0 - (time.monotonic() - started))
            result = await recorder.close()
            wall = time.monotonic() - started
        finally:
            await listener.leave()
    assert not result.failed
    with av.open(str(path)) as container:
        assert container.duration is not None
        duration = container.duration / av.time_base
    print(f"room file: {duration:.3f} s (wall {wall:.3f} s), all bots in at {all_in:.2f} s")
    assert abs(duration - 60.0) <= 0.5
    frames = tiles_in(path, [3])
    fps = len(frames) / duration
    print(f"{len(frames)} frames: {fps:.2f} fps; audio late {result.audio_late}, "
          f"dropped {result.audio_dropped}")  # fmt: skip
    assert abs(fps - FPS) <= 1
    # Every second once everyone is in: each tile shows its own bot's colour.
    checked = 0
    for t, tiles in frames[::FPS]:
        if t < all_in + 1.0:
            continue
        assert tiles[3] == order, f"tiles at {t:.1f} s"
        checked += 1
    assert checked >= 50
    tones = [tone_frequency(name) for name in names]
    peaks = audio_peaks(path, all_in + 1.0, 3)
    print(f"tones {tones}, peaks {[round(p, 1) for p in peaks]}")
    for tone in tones:
        assert min(abs(tone - p) for p in peaks) <= 2, f"{tone} Hz not among {peaks}"


def _record_room(url: str, path: Path, *extra: str) -> subprocess.Popen[str]:
    """``meshpeer join --record-room`` sending nothing, printing its progress lines."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "peer", "join", url, "--room", "test", "--id", "rec",
            "--video", "none", "--audio", "none", "--stats-interval", "60",
            "--record-room", str(path), "--record-room-size", "640x360", "--record-room-fps",
            str(FPS), *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


async def _lines(process: subprocess.Popen[str], *texts: str) -> list[str]:
    """Stdout lines, read until one containing each of ``texts`` came (in any order): those
    lines. Read on a thread: the event loop keeps running."""
    assert process.stdout is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + seconds(30)
    while len(found) < len(texts) and time.monotonic() < deadline:
        line = await asyncio.to_thread(process.stdout.readline)
        if not line:
            break
        found.update({text: line for text in texts if text in line})
    missing = [text for text in texts if text not in found]
    assert not missing, f"no line with {missing} from the recorder"
    return [found[text] for text in texts]


async def test_a_peer_leaving_loses_its_tile_and_the_file_stays_valid(
    server: RunningServer, tmp_path: Path
) -> None:
    path = tmp_path / "room.mkv"
    process = _record_room(server.ws_url, path, "--duration", str(seconds(14)))
    try:
        async with agents(
            server.ws_url, ["red", "green", "blue"], media_for=coloured_media
        ) as bots:
            await _lines(process, "recording the room")
            await _lines(process, *(f"first video frame from {name}" for name in COLOURS))
            await asyncio.sleep(3.0)  # three tiles on screen for a while
            await bots[2].leave()  # blue
            (closed,) = await _lines(process, "room recording:")
        _, stderr = await asyncio.to_thread(process.communicate, timeout=seconds(30))
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, stderr
    print(closed.strip())
    assert f"room recording: {path} (" in closed
    frames = tiles_in(path, [3, 2])  # decodes end to end
    with av.open(str(path)) as container:
        assert container.duration is not None
        duration = container.duration / av.time_base
    assert abs(duration - float(closed.split("(")[1].split(" s")[0])) <= 0.5
    three = [t for t, tiles in frames if sorted(map(str, tiles[3])) == sorted(COLOURS)]
    two = [t for t, tiles in frames if sorted(map(str, tiles[2])) == ["green", "red"]]
    assert len(three) >= 2 * FPS, "three tiles for at least 2 s"
    assert two and min(two) > max(three), "after blue left: red and green only"
    assert frames[-1][0] - min(two) >= 2.0, "two tiles until the end (the recorder left last)"


async def test_a_sigkilled_recorder_leaves_a_playable_file(
    server: RunningServer, tmp_path: Path
) -> None:
    path = tmp_path / "room.mkv"
    process = _record_room(server.ws_url, path)
    try:
        async with agents(server.ws_url, ["red"], media_for=coloured_media):
            await _lines(process, "recording the room")
            started = time.monotonic()
            await _lines(process, "first video frame from red")
            await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - started)))
            process.kill()  # SIGKILL: no chance to finalise
            killed = time.monotonic() - started
            await asyncio.to_thread(process.wait)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -9
    frames = tiles_in(path, [1])
    last = frames[-1][0]
    print(f"killed after {killed:.2f} s: {len(frames)} frames up to {last:.2f} s")
    assert last >= killed - 1.5, "the file plays up to about its last second"
    assert len(frames) >= (killed - 1.5) * FPS * 0.9
    assert frames[-1][1][1] == ["red"]
    with av.open(str(path)) as container:
        audio = sum(f.samples for f in container.decode(audio=0))
    assert audio >= (killed - 1.5) * 48_000


def test_the_flags_and_their_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["join", "--record-room", "room.mkv"])
    assert (args.record_room, args.record_room_size, args.record_room_fps) == (
        Path("room.mkv"),
        (1280, 720),
        15,
    )
    args = build_parser().parse_args(["join", "--record-room-size", "640X360"])
    assert args.record_room_size == (640, 360)
    for size in ("641x360", "640", "0x360", "ax360"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["join", "--record-room-size", size])
    capsys.readouterr()
    (tmp_path / "file").write_text("")
    unwritable = tmp_path / "file" / "room.mkv"
    code = main(["join", "--video", "none", "--audio", "none", "--record-room", str(unwritable)])
    assert code == 1
    assert f"cannot write the room recording {unwritable}" in capsys.readouterr().err
