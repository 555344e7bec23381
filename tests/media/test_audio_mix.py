"""AudioMix following a sender's clock (``follow``), as the speaker uses it: pure, tables of
pushes and mixes, no sound card. The mix's other rules are in test_room_recorder.py."""

from __future__ import annotations

import numpy as np
import pytest

from peer.media.audio_mix import BLOCK_SAMPLES, AudioMix
from tests.media.clips import remote

#: 5 minutes of 20 ms blocks.
BLOCKS = 15_000


def _run(mix: AudioMix, per_block: float) -> list[int]:
    """A sender that sends ``per_block`` samples for each block the card plays (960 at the
    same clock); the buffered samples after each mix."""
    track = remote("a", "audio")
    sent = 0.0
    held = []
    for index in range(BLOCKS):
        due = round((index + 1) * per_block) - round(sent)
        sent += due
        mix.push(track, np.full((due, 2), 1000, np.int16))
        mix.mix()
        held.append(mix.buffered(track))
    return held


@pytest.mark.parametrize("ppm", [-2000, -200, 200, 2000])
def test_following_holds_the_buffer_at_its_prebuffer_against_a_drifting_sender(ppm: int) -> None:
    mix = AudioMix(capacity=12, prebuffer=2, follow=True)
    held = _run(mix, BLOCK_SAMPLES * (1 + ppm * 1e-6))
    last_minute = np.array(held[-3000:]) / 48  # ms, after each mix
    # The prebuffer (40 ms) less the block just played, give or take the dead zone and the
    # offset a proportional follower keeps against the drift; never empty.
    assert 5 <= last_minute.mean() <= 35, last_minute.mean()
    assert last_minute.min() > 0
    assert mix.late == 0
    assert mix.underruns == 0
    assert mix.stretched > 0


@pytest.mark.parametrize("ppm", [-2000, 2000])
def test_without_following_a_drifting_sender_drops_or_runs_dry(ppm: int) -> None:
    mix = AudioMix(capacity=12, prebuffer=2)
    _run(mix, BLOCK_SAMPLES * (1 + ppm * 1e-6))
    assert (mix.late if ppm > 0 else mix.underruns) > 0


def test_a_stretched_block_keeps_the_pitch_within_half_a_percent() -> None:
    mix = AudioMix(capacity=500, prebuffer=2, follow=True)
    track = remote("a", "audio")
    time = np.arange(BLOCK_SAMPLES * 400) / 48_000
    tone = (np.sin(2 * np.pi * 1000 * time) * 10_000).astype(np.int16)
    stereo = np.repeat(tone[:, np.newaxis], 2, axis=1)
    mix.push(track, stereo[: 2 * BLOCK_SAMPLES])  # the prebuffer: playing from the target
    first = mix.mix()[:, 0]
    mix.push(track, stereo[2 * BLOCK_SAMPLES :])  # then ~8 s at once: far too full
    played = np.concatenate([first] + [mix.mix()[:, 0] for _ in range(99)])
    assert mix.stretched == 99
    assert mix.skipped == 0  # a tone is never quiet: followed, not skipped
    crossings = np.count_nonzero(np.diff(np.signbit(played).astype(np.int8)) == -1)
    frequency = crossings / (len(played) / 48_000)
    assert 1000 < frequency <= 1006  # taken faster: a little higher, never more than 0.5%


def test_a_voice_starts_at_its_prebuffer_not_behind_a_backlog() -> None:
    """A call's first burst (a sound card handing over 2 s at once, a network burst) is
    cut to the prebuffer when the voice starts: followed at 0.5%, it would stay a minute."""
    mix = AudioMix(capacity=500, prebuffer=2, follow=True)
    track = remote("a", "audio")
    mix.push(track, np.ones((BLOCK_SAMPLES * 50, 2), np.int16))  # 1 s before it starts
    mix.mix()
    assert mix.buffered(track) == BLOCK_SAMPLES  # the prebuffer less the block played


@pytest.mark.parametrize(("level", "skips"), [(0, True), (200, True), (2000, False)])
def test_time_gained_at_once_is_skipped_at_the_next_quiet_moment(level: int, skips: bool) -> None:
    """A burst of 80 ms on a voice that plays at its prebuffer (a stall on this side or the
    sender's): quiet, it is skipped within a second (what stayed above the prebuffer for a
    whole window); loud, it is left to the follower (0.5%: most of it a second later)."""
    mix = AudioMix(capacity=12, prebuffer=2, follow=True)
    track = remote("a", "audio")
    block = np.full((BLOCK_SAMPLES, 2), level, np.int16)
    for _ in range(3):
        mix.push(track, block)
    mix.mix()
    held = []
    for index in range(100):
        mix.push(track, block)
        if index == 10:
            for _ in range(4):
                mix.push(track, block)
        mix.mix()
        held.append(mix.buffered(track))
    assert (mix.late, mix.underruns) == (0, 0)
    after_a_second = held[10 + 50] / 48  # ms after the mix
    if skips:
        assert mix.skipped >= 1
        assert after_a_second <= 40, held
    else:
        assert mix.skipped == 0
        assert after_a_second >= 80, held
