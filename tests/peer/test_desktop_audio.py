"""Desktop audio end to end with real parts: a PulseAudio server of the test's own
(tests/pulse_server.py: a null sink as the speaker, a sine source as the microphone),
``meshpeer join --audio mic`` and ``meshpeer join --speaker`` as processes, what the sink
played read back with ``parec``; ``meshpeer devices``; bad device names.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from peer.cli import build_parser
from peer.media.errors import MediaSourceError
from peer.runner import open_speaker_for
from tests.peer.helpers import join_command, stop
from tests.pulse_server import (
    RATE,
    SINE_HZ,
    PipeSource,
    PulseServer,
    dominant_frequency,
    onsets,
    pulse_server,
    recording,
)
from tests.support import REPO, RunningServer, eventually, seconds

#: Mouth-to-ear at the median (issue 20), and the frequency's tolerance.
#: Real-time sound through a sound server: run alone, after the parallel part of the suite
#: (a second worker's media on 2 cores moves the mouth-to-ear median past 0.25 s).
pytestmark = pytest.mark.solo

LATENCY_LIMIT = 0.250
FREQUENCY_TOLERANCE = 2.0
#: Two agent processes started, joined and connected: seconds on a busy machine.
CALL_START = 40.0


@pytest.fixture
def pulse() -> Iterator[PulseServer]:
    with pulse_server() as server:
        yield server


async def _agent(
    pulse: PulseServer, server: RunningServer, peer_id: str, *extra: str
) -> asyncio.subprocess.Process:
    command = join_command(server.ws_url, peer_id, "--video", "none", *extra)
    return await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=pulse.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.fixture
async def call(
    pulse: PulseServer, server: RunningServer, request: pytest.FixtureRequest
) -> AsyncIterator[None]:
    """A (``--audio mic:<the test's mic>``, default ``mic``) and B (``--speaker spk``)."""
    mic = getattr(request, "param", "mic")
    a = await _agent(pulse, server, "a", "--audio", f"mic:{mic}")
    b = await _agent(pulse, server, "b", "--audio", "none", "--speaker", "spk")
    try:
        yield
    finally:
        for proc in (a, b):
            if proc.returncode is not None:  # it died: say why
                assert proc.stderr is not None
                print(f"agent exited {proc.returncode}: {(await proc.stderr.read()).decode()}")
            await stop(proc)


def _devices(pulse: PulseServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peer", "devices"],
        cwd=REPO,
        env=pulse.env,
        capture_output=True,
        text=True,
        timeout=seconds(30),
        check=False,
    )


def test_devices_lists_the_null_sink_and_the_sine_source_by_name(pulse: PulseServer) -> None:
    done = _devices(pulse)
    assert done.returncode == 0, done.stderr
    inputs, outputs = done.stdout.split("audio outputs")
    assert "\n  mic (default)  Sine source" in inputs
    assert "\n  spk.monitor  Monitor of Null Output" in inputs
    assert "\n  spk (default)  Null Output" in outputs
    assert "cameras (--video webcam:PATH):" in outputs


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--audio", "mic:nowhere"], "no audio input named 'nowhere' (there are: "),
        (["--speaker", "nowhere"], "no audio output named 'nowhere' (there are: spk;"),
    ],
)
def test_a_bad_device_name_is_one_line_and_exit_status_1(
    pulse: PulseServer, flag: list[str], message: str
) -> None:
    command = join_command("ws://127.0.0.1:9/ws", "a", "--video", "none", *flag)
    done = subprocess.run(
        command, cwd=REPO, env=pulse.env, capture_output=True, text=True, timeout=seconds(30)
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


async def test_the_microphone_reaches_the_speaker_at_its_frequency(
    pulse: PulseServer, call: None
) -> None:
    with recording(pulse) as recorder:
        heard = await eventually(
            lambda: onsets(recorder.take()), seconds(CALL_START), "the mic's tone on the speaker"
        )
        await asyncio.sleep(1.5)  # a second and a half of tone after it started
        played = recorder.take()
    begin = round((heard[0] - played.time_of(0)) * RATE) + RATE // 4
    tone = played.samples[begin : begin + RATE]
    assert len(tone) == RATE
    frequency = dominant_frequency(tone)
    print(f"sine source {SINE_HZ} Hz, speaker {frequency:.2f} Hz")
    assert abs(frequency - SINE_HZ) <= FREQUENCY_TOLERANCE


@pytest.fixture
def voice(pulse: PulseServer) -> Iterator[PipeSource]:
    source = PipeSource(pulse)
    source.start()
    try:
        yield source
    finally:
        source.stop()


@pytest.mark.parametrize("call", ["voice"], indirect=True)
async def test_mouth_to_ear_latency_at_the_median(
    pulse: PulseServer, voice: PipeSource, call: None
) -> None:
    """A beep a second into the microphone; its onset on the speaker, beep by beep."""
    with recording(pulse) as recorder:
        voice.beep_every(1.0)
        await eventually(
            lambda: onsets(recorder.take()), seconds(CALL_START), "a beep on the speaker"
        )
        await eventually(
            lambda: len(onsets(recorder.take())) >= 8, seconds(15), "eight beeps on the speaker"
        )
        heard = onsets(recorder.take())
    delays = []
    for said in voice.onsets:
        after = [moment - said for moment in heard if 0 <= moment - said < 1.0]
        if after:
            delays.append(min(after))
    print(f"mouth to ear (s): {[round(d, 3) for d in delays]}")
    assert len(delays) >= 6
    assert statistics.median(delays[1:]) <= LATENCY_LIMIT


@pytest.mark.parametrize(
    ("flags", "plays"),
    [
        (["--display"], True),
        (["--display", "--no-speaker"], False),
        ([], False),
        (["--speaker"], True),
    ],
)
def test_the_display_plays_the_room_unless_told_not_to(
    pulse: PulseServer, monkeypatch: pytest.MonkeyPatch, flags: list[str], plays: bool
) -> None:
    monkeypatch.setenv("PULSE_SERVER", pulse.env["PULSE_SERVER"])
    args = build_parser().parse_args(["join", *flags])
    speaker = open_speaker_for(args, "me")
    try:
        assert (speaker is not None) == plays
        if speaker is not None:  # a stream playing on the server (the null sink)
            assert pulse.pactl("list", "short", "sink-inputs").strip()
    finally:
        if speaker is not None:
            speaker.close()


def test_a_speaker_the_display_implies_is_dropped_when_there_is_no_sound(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PULSE_SERVER", "unix:/nonexistent/pulse/native")
    args = build_parser().parse_args(["join", "--display", "--speaker", "nowhere"])
    with pytest.raises(MediaSourceError):  # asked for by name: an error
        open_speaker_for(args, "me")
    args = build_parser().parse_args(["join", "--display"])
    speaker = open_speaker_for(args, "me")  # implied: the call goes on silent, or plays
    if speaker is None:
        assert "no sound" in capsys.readouterr().out
    else:
        speaker.close()
