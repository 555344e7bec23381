"""Who is speaking and who is muted: levels (pure), their drawing on mosaic tiles, and the
track that sends silence or black in place of a muted source."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
import pytest

from peer.media.levels import QUIET_AFTER, RELEASE, LevelMeter, dbfs, is_black, shown_level
from peer.media.mosaic import Mosaic
from peer.media.muting import MutableTrack
from peer.media.synthetic import SyntheticVideoTrack, ToneAudioTrack
from tests.media.clips import audio_frame, remote

TILE = (160, 120)
PICTURE_H = TILE[1] - max(18, TILE[1] // 10)  # above the label strip
GREY = (128, 128, 128)
Image = npt.NDArray[np.uint8]


def _silent_frame(pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1920), np.int16), layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = 48_000, pts, Fraction(1, 48_000)
    return frame


def _green(area: Image) -> bool:
    """The level colour (60, 200, 60 BGR) somewhere in ``area``."""
    b, g, r = (area[..., i].astype(int) for i in range(3))
    return bool(((g > 170) & (b < 100) & (r < 100)).any())


def _red(area: Image) -> bool:
    """The marker colour (40, 40, 220 BGR) somewhere in ``area``."""
    b, g, r = (area[..., i].astype(int) for i in range(3))
    return bool(((r > 190) & (b < 80) & (g < 80)).any())


@pytest.mark.parametrize(
    ("samples", "expected_db"),
    [
        (np.full(960, 32767, np.int16), 0.0),
        (np.zeros(960, np.int16), -math.inf),
        (np.full(960, 0.5, np.float32), -6.02),
        ((np.sin(np.arange(960) * 2 * np.pi / 48) * 8000).astype(np.int16), -15.26),
        (np.ones(960, np.int16), -90.31),  # one least significant bit: still not zeros
    ],
)
def test_dbfs_of_a_block(samples: npt.NDArray[np.generic], expected_db: float) -> None:
    assert dbfs(samples) == pytest.approx(expected_db, abs=0.01)


@pytest.mark.parametrize(("db", "shown"), [(0, 1), (-30, 0.5), (-60, 0), (-90, 0), (3, 1)])
def test_shown_level_maps_minus_60_to_0_dbfs_onto_0_to_1(db: float, shown: float) -> None:
    assert shown_level(db) == pytest.approx(shown)


def test_the_meter_attacks_at_once_and_releases_over_300_ms() -> None:
    meter = LevelMeter()
    assert meter.quiet(0.0) and meter.value(0.0) == 0  # nothing heard yet: muted
    meter.update(-15.0, 1.0)
    assert meter.value(1.0) == pytest.approx(0.75)  # attack: the first loud block
    assert meter.speaking(1.0) and not meter.quiet(1.0)
    assert meter.value(1.0 + RELEASE / 2) == pytest.approx(0.75 - 0.5)  # falling...
    assert meter.value(1.0 + RELEASE) == 0  # ...to nothing within RELEASE
    meter.update(-math.inf, 1.1)  # silence keeps the level falling, not dropping at once
    assert meter.value(1.1) == pytest.approx(0.75 - 0.1 / RELEASE)
    assert not meter.quiet(1.0 + QUIET_AFTER) and meter.quiet(1.01 + QUIET_AFTER)


def test_black_is_a_stopped_camera_not_a_dark_picture() -> None:
    assert is_black(np.zeros((60, 80, 3), np.uint8))
    assert is_black(np.full((60, 80, 3), 16, np.uint8))  # limited-range black, unconverted
    dark = np.full((60, 80, 3), 10, np.uint8)
    dark[20:40, 20:60] = 70  # a dim face in a dark room
    assert not is_black(dark)


def test_a_tone_tile_shows_its_level_and_ring_a_silent_one_the_muted_marker() -> None:
    now = [0.0]
    mosaic = Mosaic(tile=TILE, clock=lambda: now[0], indicators=True)
    for step in range(60):  # 1.2 s of audio and pictures: longer than QUIET_AFTER
        now[0] = step * 0.02
        for peer in ("talker", "quiet"):
            mosaic.put_frame(remote(peer, "video"), np.full((120, 160, 3), GREY, np.uint8))
        mosaic.put_frame(remote("talker", "audio"), audio_frame(step * 960))
        mosaic.put_frame(remote("quiet", "audio"), _silent_frame(step * 960))
    image = mosaic.render()
    talker, quiet = image[:PICTURE_H, : TILE[0]], image[:PICTURE_H, TILE[0] :]
    bar = talker[PICTURE_H // 2 :, :4]  # the bar, from the bottom of the left edge
    assert _green(bar) and not _green(quiet[PICTURE_H // 2 :, :4])
    assert _green(talker[:3, 40:120]), "no speaking ring along the talker's top edge"
    assert not _green(quiet[:3, 40:120])
    assert _red(quiet[:20, :80]), "no mic-off marker on the silent tile"
    assert not _red(talker)
    assert not _red(quiet[:20, 80:]), "a cam-off marker on a tile that shows pictures"
    now[0] += RELEASE + 0.01  # the talker stopped: its bar and ring are gone...
    later = mosaic.render()[:PICTURE_H, : TILE[0]]
    assert not _green(later[PICTURE_H // 2 :, :4]) and not _green(later[:3, 40:120])
    now[0] += QUIET_AFTER  # ...and after QUIET_AFTER without sound it reads as muted
    assert _red(mosaic.render()[:20, :80])


def test_cam_off_for_black_or_stale_pictures_and_our_own_markers_as_set() -> None:
    now = [0.0]
    mosaic = Mosaic(tile=TILE, clock=lambda: now[0], indicators=True)
    mosaic.put_local_frame(np.full((120, 160, 3), GREY, np.uint8), label="me")
    mosaic.put_frame(remote("dark", "video"), np.zeros((120, 160, 3), np.uint8))
    mosaic.put_frame(remote("gone", "video"), np.full((120, 160, 3), GREY, np.uint8))
    mosaic.put_local_audio(_silent_frame(0))  # our own silence is not a marker...
    local, dark, _ = _tiles(mosaic.render())
    assert not _red(local)
    assert _red(dark[:20, TILE[0] // 2 :])  # a black picture: cam off (top right)
    now[0] = QUIET_AFTER + 0.1  # no picture from "gone" since
    mosaic.put_frame(remote("dark", "video"), np.zeros((120, 160, 3), np.uint8))
    mosaic.put_local_frame(np.full((120, 160, 3), GREY, np.uint8), label="me")
    local, _, gone = _tiles(mosaic.render())
    assert _red(gone[:20, TILE[0] // 2 :]) and not _red(local)
    mosaic.put_local_audio(audio_frame(0))  # our microphone's level on our tile
    local, _, _ = _tiles(mosaic.render())
    assert _green(local[PICTURE_H // 2 :, :4])
    mosaic.set_local_muted(frozenset({"audio", "video"}))  # ...what we chose is
    local, _, _ = _tiles(mosaic.render())
    assert _red(local[:20, : TILE[0] // 2]) and _red(local[:20, TILE[0] // 2 :])
    assert not _green(local[PICTURE_H // 2 :, :4])  # and a muted microphone shows no level


def test_without_indicators_tiles_carry_no_markers() -> None:
    mosaic = Mosaic(tile=TILE)  # the room recording's mosaic
    mosaic.put_frame(remote("bob", "video"), np.zeros((120, 160, 3), np.uint8))
    mosaic.put_frame(remote("bob", "audio"), _silent_frame(0))
    assert not _red(mosaic.render())


def _tiles(image: Image) -> list[Image]:
    """The pictures of a 2x2 grid's first three tiles."""
    width, height = TILE
    origins = [(0, 0), (width, 0), (0, height)]
    return [image[y : y + PICTURE_H, x : x + width] for x, y in origins]


async def test_a_muted_track_sends_silence_or_black_at_the_source_pace() -> None:
    tone, card = ToneAudioTrack("t"), SyntheticVideoTrack("v", width=160, height=120, fps=30)
    audio, video = MutableTrack(tone), MutableTrack(card)
    try:
        loud = await audio.recv()
        assert isinstance(loud, av.AudioFrame) and dbfs(loud.to_ndarray()) > -30
        audio.muted = video.muted = True
        silent, black = await audio.recv(), await video.recv()
        assert isinstance(silent, av.AudioFrame) and isinstance(black, av.VideoFrame)
        assert dbfs(silent.to_ndarray()) == -math.inf
        assert (silent.samples, silent.sample_rate, silent.format.name) == (960, 48_000, "s16")
        assert silent.pts == (loud.pts or 0) + 960  # the next slot: the pace is kept
        assert is_black(black.to_ndarray(format="bgr24"))
        assert (black.width, black.height, black.format.name) == (160, 120, "yuv420p")
        audio.muted = video.muted = False
        again = await video.recv()
        assert isinstance(again, av.VideoFrame) and not is_black(again.to_ndarray(format="bgr24"))
        assert again.pts is not None and black.pts is not None and again.pts > black.pts
    finally:
        tone.stop()
        card.stop()
