"""The shared encoder's decisions on receiver feedback, without media or sockets."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from peer.media.feedback import BitrateFollower, KeyframeGate, TierSplit


def test_no_request_no_keyframe() -> None:
    gate = KeyframeGate()
    assert not any(gate.take(t / 30) for t in range(100))


def test_picture_loss_requests_are_coalesced_to_one_per_interval() -> None:
    gate = KeyframeGate(interval=0.5)
    keyframes = []
    for frame in range(300):  # 10 s at 30 fps, a PLI before every frame
        now = frame / 30
        gate.request()
        if gate.take(now):
            keyframes.append(now)
    assert len(keyframes) == 20
    assert all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(keyframes))


def test_a_request_waits_out_the_interval_then_is_served() -> None:
    gate = KeyframeGate(interval=0.5)
    gate.produced(0.0)
    gate.request()
    assert not gate.take(0.2)
    assert not gate.take(0.49)
    assert gate.take(0.5)
    assert not gate.take(0.6)  # served: nothing pending


def test_an_urgent_request_is_served_on_the_next_frame() -> None:
    gate = KeyframeGate(interval=0.5)
    gate.produced(0.0)
    gate.request(urgent=True)
    assert gate.take(0.03)
    gate.request()  # a PLI right after still waits its turn
    assert not gate.take(0.1)


def test_a_restart_keyframe_answers_pending_requests() -> None:
    gate = KeyframeGate(interval=0.5)
    gate.request()
    gate.produced(1.0)  # the encoder restarted (new rate): that was a keyframe
    assert not gate.take(1.1)


@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=400))
def test_keyframes_from_plain_requests_never_come_closer_than_the_interval(
    steps: list[tuple[bool, bool]],
) -> None:
    gate = KeyframeGate(interval=0.5)
    last = None
    for index, (asked, _) in enumerate(steps):
        now = index / 30
        if asked:
            gate.request()
        if gate.take(now):
            assert last is None or now - last >= 0.5 - 1e-9
            last = now


def follower() -> BitrateFollower:
    return BitrateFollower(initial=500_000, low=250_000, high=1_500_000)


def test_the_target_follows_the_lowest_receiver() -> None:
    rate = follower()
    assert rate.estimate("a", 1_200_000, 10.0)
    assert rate.target == 1_200_000
    assert rate.estimate("b", 600_000, 11.5)
    assert rate.target == 600_000
    assert rate.lowest == 600_000


def test_small_moves_are_ignored() -> None:
    rate = follower()
    assert not rate.estimate("a", 560_000, 10.0)  # +12%
    assert not rate.estimate("a", 420_000, 20.0)  # -16%
    assert rate.target == 500_000


def test_estimates_are_clamped_to_aiortcs_bounds() -> None:
    rate = follower()
    rate.estimate("a", 50_000_000, 10.0)
    assert rate.target == 1_500_000
    rate.estimate("a", 10_000, 20.0)
    assert rate.target == 250_000


def test_falls_are_followed_within_a_second_rises_after_five() -> None:
    rate = follower()
    rate.estimate("a", 1_000_000, 10.0)
    assert not rate.estimate("a", 400_000, 10.5)  # settle: 1 s since the last change
    assert rate.estimate("a", 400_000, 11.0)
    assert not rate.estimate("a", 1_000_000, 14.0)  # rise held for 5 s
    assert rate.estimate("a", 1_000_000, 16.0)
    assert rate.target == 1_000_000


def test_a_slow_receiver_leaving_lets_the_rate_rise() -> None:
    rate = follower()
    rate.estimate("fast", 1_400_000, 0.0)
    rate.estimate("slow", 300_000, 10.0)
    assert rate.target == 300_000
    assert rate.forget("slow", 20.0)
    assert rate.target == 1_400_000
    assert not rate.forget("nobody", 30.0)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5_000_000)), max_size=200))
def test_changes_are_rare_and_stay_in_bounds(estimates: list[tuple[int, int]]) -> None:
    """Whatever the receivers say, the target stays within bounds and changes (each one a
    keyframe) at most once per second."""
    rate = follower()
    changes = []
    for index, (receiver, bps) in enumerate(estimates):
        now = index * 0.25  # REMB about four times a second across receivers
        if rate.estimate(receiver, bps, now):
            changes.append(now)
        assert 250_000 <= rate.target <= 1_500_000
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(changes))


def test_no_second_tier_while_estimates_are_within_2x() -> None:
    split: TierSplit[str] = TierSplit(hold=0)
    assert split.plan({"a": 1_000_000, "b": 600_000, "c": 510_000}, 0) == frozenset()
    assert split.plan({"a": 1_000_000}, 1) == frozenset()
    assert split.plan({}, 2) == frozenset()


def test_receivers_below_half_the_fastest_get_the_lower_tier() -> None:
    split: TierSplit[str] = TierSplit(hold=0)
    estimates = {"a": 1_400_000, "b": 1_200_000, "c": 300_000, "d": 650_000}
    assert split.plan(estimates, 0) == {"c", "d"}


def test_the_split_waits_until_the_spread_has_lasted() -> None:
    """A browser's first estimates ramp up from ~100 kbps: no second encoder for that."""
    split: TierSplit[str] = TierSplit(hold=3.0)
    assert split.plan({"agent": 900_000, "page": 250_000}, 10.0) == frozenset()
    assert split.plan({"agent": 900_000, "page": 300_000}, 12.0) == frozenset()
    assert split.plan({"agent": 900_000, "page": 600_000}, 12.5) == frozenset()  # ramped up
    assert split.plan({"agent": 900_000, "page": 400_000}, 14.0) == frozenset()  # again
    assert split.plan({"agent": 900_000, "page": 400_000}, 16.9) == frozenset()
    assert split.plan({"agent": 900_000, "page": 400_000}, 17.0) == {"page"}  # 3 s on


def test_leaving_the_lower_tier_needs_1_5x_not_2x() -> None:
    split: TierSplit[str] = TierSplit(hold=0)
    assert split.plan({"fast": 1_200_000, "slow": 500_000}, 0) == {"slow"}
    assert split.plan({"fast": 1_200_000, "slow": 700_000}, 1) == {"slow"}  # 1.7x: stays
    assert split.plan({"fast": 1_200_000, "slow": 850_000}, 2) == frozenset()  # 1.4x: back
    assert split.plan({"fast": 1_200_000, "slow": 700_000}, 3) == frozenset()  # needs 2x again


@given(st.dictionaries(st.integers(0, 9), st.integers(250_000, 1_500_000), max_size=10))
def test_the_fastest_receiver_is_never_in_the_lower_tier(estimates: dict[int, int]) -> None:
    split: TierSplit[int] = TierSplit(hold=0)
    low = split.plan(estimates, 0)
    if estimates:
        top = max(estimates.values())
        assert all(estimates[r] < top for r in low)
        assert all(estimates[r] * 2 >= top for r in estimates if r not in low)
