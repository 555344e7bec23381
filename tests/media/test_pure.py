"""The pure pieces of peer.media: pacing, recording timestamps, layout, spec strings."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from peer.media.display import check_display
from peer.media.errors import DisplayError, MediaSourceError
from peer.media.mosaic import fit, grid
from peer.media.pacing import FrameClock
from peer.media.sources import SourceKind, SourceSpec, VideoSettings, parse_source_spec
from peer.media.synthetic import tone_frequency
from peer.media.tap import FpsMeter
from peer.media.timeline import AudioStamper, RecordingClock, VideoStamper


def test_frame_clock_does_not_drift() -> None:
    clock = FrameClock(30, 90_000)
    ticks = [clock.next(100.0)]
    ticks += [clock.next(100.0 + i / 30 + 0.007) for i in range(1, 301)]  # every wake-up late
    assert [t.pts for t in ticks[:4]] == [0, 3000, 6000, 9000]
    assert ticks[300].due == pytest.approx(110.0)  # frame n is due at start + n/30, exactly
    assert ticks[300].pts == 300 * 3000


def test_frame_clock_skips_ahead_after_a_long_stall_instead_of_bursting() -> None:
    clock = FrameClock(50, 48_000, max_lag=0.5)
    clock.next(10.0)
    clock.next(10.02)
    after_stall = clock.next(15.0)
    assert after_stall.pts == 250 * 960  # where real time is, not frame 2
    assert after_stall.due == pytest.approx(15.0)
    assert clock.skipped == 248
    assert clock.next(15.001).pts == 251 * 960


def test_frame_clock_with_fractional_rate_stays_monotonic() -> None:
    clock = FrameClock(Fraction(30000, 1001), 90_000)
    pts = [clock.next(0.0).pts for _ in range(100)]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert pts[1] == 3003


def test_recording_clock_aligns_kinds_on_arrival_then_follows_media_time() -> None:
    clock = RecordingClock()
    assert clock.place("video", 0.0, arrival=50.0) == 0.0  # first frame of either kind = 0
    # audio's own pts start at 0 too, but it arrived 0.3 s later
    assert clock.place("audio", 0.0, arrival=50.3) == pytest.approx(0.3)
    # afterwards media time rules, not arrival jitter
    assert clock.place("video", 1.0, arrival=51.2) == pytest.approx(1.0)
    assert clock.place("audio", 0.5, arrival=50.7) == pytest.approx(0.8)


def test_recording_clock_reanchors_a_media_clock_that_jumps() -> None:
    clock = RecordingClock(max_skew=2.0)
    clock.place("video", 0.0, arrival=0.0)
    assert clock.place("video", 1000.0, arrival=1.0) == pytest.approx(1.0)
    assert clock.reanchored == 1
    assert clock.place("video", 1001.0, arrival=2.05) == pytest.approx(2.0)
    assert clock.place("video", None, arrival=3.0) == pytest.approx(3.0)


def test_video_stamper_repairs_small_steps_back_and_drops_far_ones() -> None:
    stamper = VideoStamper(rate=1000, max_back=0.5)
    stamped = [stamper.stamp(t) for t in (0.0, 0.033, 0.033, 0.020, 0.066, -1.0, 0.1)]
    assert stamped == [0, 33, 34, 35, 66, None, 100]
    assert (stamper.repaired, stamper.dropped) == (2, 1)


def test_audio_stamper_is_contiguous_keeps_gaps_and_drops_overlaps() -> None:
    stamper = AudioStamper(rate=48_000, tolerance=0.1)
    assert stamper.admit(0.0)
    assert stamper.take(960) == 0
    assert stamper.admit(0.021)  # jitter: stays contiguous
    assert stamper.take(960) == 960
    assert stamper.admit(1.0)  # a gap: jump forward
    assert stamper.take(960) == 48_000
    assert not stamper.admit(0.5)  # far behind: dropped
    assert (stamper.gaps, stamper.dropped) == (1, 1)


def test_fps_meter_counts_the_recent_window_and_decays() -> None:
    meter = FpsMeter(window=2.0)
    assert meter.rate(0.0) == 0.0
    for i in range(61):
        meter.tick(i / 30)
    assert meter.rate(2.0) == pytest.approx(30, abs=1)
    assert meter.rate(10.0) == 0.0


@pytest.mark.parametrize(
    ("count", "expected"),
    [(0, (1, 1)), (1, (1, 1)), (2, (2, 1)), (3, (2, 2)), (4, (2, 2)), (5, (3, 2)), (7, (3, 3))],
)
def test_grid_is_the_squarest_that_fits(count: int, expected: tuple[int, int]) -> None:
    assert grid(count) == expected


def test_fit_keeps_the_aspect_ratio_inside_the_box() -> None:
    assert fit((640, 480), (320, 240)) == (320, 240)
    assert fit((1280, 720), (320, 240)) == (320, 180)
    assert fit((480, 640), (320, 240)) == (180, 240)


@pytest.mark.parametrize(
    ("spec", "kind", "expected"),
    [
        ("synthetic", "video", SourceSpec(SourceKind.SYNTHETIC)),
        ("none", "video", SourceSpec(SourceKind.NONE)),
        ("webcam", "video", SourceSpec(SourceKind.WEBCAM, "/dev/video0")),
        ("webcam:/dev/video3", "video", SourceSpec(SourceKind.WEBCAM, "/dev/video3")),
        ("file:clip.mkv", "video", SourceSpec(SourceKind.FILE, "clip.mkv")),
        ("rtsp://cam.local/x", "video", SourceSpec(SourceKind.FILE, "rtsp://cam.local/x")),
        ("tone", "audio", SourceSpec(SourceKind.TONE)),
        ("mic", "audio", SourceSpec(SourceKind.MIC)),
        (
            "mic:alsa_input.usb-Headset",
            "audio",
            SourceSpec(SourceKind.MIC, "alsa_input.usb-Headset"),
        ),
        ("file:/a b.wav", "audio", SourceSpec(SourceKind.FILE, "/a b.wav")),
        ("none", "audio", SourceSpec(SourceKind.NONE)),
    ],
)
def test_source_specs(spec: str, kind: str, expected: SourceSpec) -> None:
    assert parse_source_spec(spec, kind) == expected


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("tone", "video"),
        ("mic", "video"),
        ("synthetic", "audio"),
        ("webcam", "audio"),
        ("cam", "video"),
        ("file:", "audio"),
    ],
)
def test_bad_source_specs_say_what_is_expected(spec: str, kind: str) -> None:
    with pytest.raises(MediaSourceError, match=f"unknown {kind} source .*expected"):
        parse_source_spec(spec, kind)


def test_video_settings_are_checked() -> None:
    with pytest.raises(MediaSourceError, match="even"):
        VideoSettings(width=641)
    with pytest.raises(MediaSourceError, match="fps"):
        VideoSettings(fps=0)


def test_tone_frequency_is_stable_and_in_range() -> None:
    labels = [f"peer-{i}" for i in range(50)]
    frequencies = [tone_frequency(label) for label in labels]
    assert frequencies == [tone_frequency(label) for label in labels]
    assert all(200 <= f <= 800 for f in frequencies)
    assert len(set(frequencies)) > 40


def test_display_needs_an_x_display() -> None:
    with pytest.raises(DisplayError, match="DISPLAY is not set"):
        check_display({})
    with pytest.raises(DisplayError, match="no X server"):
        check_display({"DISPLAY": ":987654"})
