"""SenderClock (lip sync): RTP timestamps on the sender's wall clock from its reports. Pure."""

from __future__ import annotations

from peer.media.timeline import REPORTS_KEPT, SenderClock

NTP = 3_900_000_000  # seconds since 1900, about now


def ntp(seconds: float) -> int:
    return round(seconds * 2**32)


def test_a_report_maps_the_mapped_timestamps_to_the_senders_clock() -> None:
    clock = SenderClock()
    assert clock.wallclock(0) is None
    clock.report(ntp(NTP + 10.0), 1_000 + 90_000)  # before the first frame: kept
    assert not clock.synced
    clock.anchor(1_000, 90_000)  # RTP 1000 is mapped timestamp 0
    assert clock.synced and clock.reports == 1
    assert abs(clock.wallclock(0) - (NTP + 9.0)) < 1e-6  # type: ignore[operator]
    assert abs(clock.wallclock(45_000) - (NTP + 9.5)) < 1e-6  # type: ignore[operator]


def test_rtp_timestamps_unwrap_across_the_32_bit_edge() -> None:
    clock = SenderClock()
    origin = 2**32 - 90_000  # one second before the wrap
    clock.anchor(origin, 90_000)
    clock.report(ntp(NTP + 3.0), (origin + 3 * 90_000) % 2**32)  # after the wrap
    assert abs(clock.wallclock(3 * 90_000) - (NTP + 3.0)) < 1e-6  # type: ignore[operator]
    clock.report(ntp(NTP + 4.0), (origin + 4 * 90_000) % 2**32)
    assert abs(clock.wallclock(10 * 90_000) - (NTP + 10.0)) < 1e-6  # type: ignore[operator]


def test_a_late_report_does_not_move_the_mapping_and_old_ones_expire() -> None:
    """aiortc stamps a report when it sends: a report from a held-up loop reads late."""
    clock = SenderClock()
    clock.anchor(0, 48_000)
    clock.report(ntp(NTP + 1.0), 48_000)
    clock.report(ntp(NTP + 2.3), 2 * 48_000)  # sent 0.3 s late
    assert abs(clock.wallclock(0) - NTP) < 1e-6  # type: ignore[operator]
    for second in range(3, 3 + REPORTS_KEPT):  # the sender's clock moved 10 ms later
        clock.report(ntp(NTP + second + 0.01), second * 48_000)
    assert abs(clock.wallclock(0) - (NTP + 0.01)) < 1e-6  # type: ignore[operator]
