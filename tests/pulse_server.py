"""A real PulseAudio server for the desktop audio tests, on a private runtime folder
(PITFALLS.md, "Audio devices"): a null sink ``spk`` as the speaker and a sine source ``mic``
as the microphone, both the defaults. Clients reach it through ``PULSE_SERVER`` (``env``);
``record`` reads what was played on a sink through its monitor (``parec``), with the time
each sample came out, and ``PipeSource`` is a microphone the test speaks into itself.

A missing ``pulseaudio`` or ``pactl`` fails with the reason (a desktop audio test that
skips itself proves nothing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tests.support import seconds, terminate

RATE = 48_000
SINE_HZ = 523  # the sine source's frequency: not the agents' tones, not a power of two
_DEBS = "pulseaudio pulseaudio-utils libportaudio2 libasound2-plugins"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found (Debian packages: {_DEBS}): run ./dev test as root")
    return found


@dataclass
class PulseServer:
    """The running server: ``env`` for its clients, ``pactl`` to change it."""

    runtime: Path
    process: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PULSE_SERVER": f"unix:{self.runtime}/pulse/native"}

    def pactl(self, *args: str) -> str:
        done = subprocess.run(
            [_binary("pactl"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=seconds(10),
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


@contextlib.contextmanager
def pulse_server() -> Iterator[PulseServer]:
    """PulseAudio as root, no sound card, its socket in a fresh 0700 folder; killed after."""
    binary = _binary("pulseaudio")
    _binary("pactl")
    runtime = Path(tempfile.mkdtemp(prefix="meshpeer-pulse-"))
    runtime.chmod(0o700)
    command = [
        binary, "-n", "--daemonize=no", "--exit-idle-time=-1", "--system=false",
        "--load=module-native-protocol-unix auth-anonymous=1",
        "--load=module-null-sink sink_name=spk rate=48000",
        f"--load=module-sine-source source_name=mic frequency={SINE_HZ} rate=48000",
    ]  # fmt: skip
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(runtime)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = PulseServer(runtime, process)
    try:
        deadline = time.monotonic() + seconds(10)
        while True:
            try:
                server.pactl("info")
                break
            except RuntimeError:
                if process.poll() is not None or time.monotonic() > deadline:
                    error = process.stderr.read().decode() if process.poll() is not None else ""
                    raise RuntimeError(f"pulseaudio did not start: {error[-400:]}") from None
                time.sleep(0.05)
        server.pactl("set-default-sink", "spk")
        server.pactl("set-default-source", "mic")
        yield server
    finally:
        terminate(process)
        shutil.rmtree(runtime, ignore_errors=True)


@dataclass
class Recording:
    """What a sink played: mono samples at 48 kHz, and when each chunk of them came out
    (``arrivals``, monotonic, and ``ends``, the sample count after each chunk)."""

    samples: npt.NDArray[np.int16]
    arrivals: npt.NDArray[np.float64]
    ends: npt.NDArray[np.int64]

    def time_of(self, index: int, around: float = 2.0) -> float:
        """The monotonic time sample ``index`` came out: the earliest that the chunks of
        the ``around`` seconds either side allow (arrival minus the samples since; a chunk
        held back in a buffer only makes its estimate later, so delays measured against it
        are never shorter than the truth). Local, so a sink clock off by parts per million
        over a long run does not bend it."""
        near = np.abs(self.ends - index) <= around * RATE
        if not near.any():
            near = np.ones(len(self.ends), bool)
        offsets = self.arrivals[near] - self.ends[near] / RATE
        return float(offsets.min() + index / RATE)


@dataclass
class Recorder:
    """``parec`` on a sink's monitor, read on a thread; ``take()`` returns all so far."""

    process: subprocess.Popen[bytes]
    chunks: list[bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    _received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _read(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while chunk := os.read(fd, 4096):
            now = time.monotonic()
            with self._lock:
                self.chunks.append(chunk)
                self._received += len(chunk)
                self.arrivals.append(now)
                self.ends.append(self._received // 2)

    def take(self) -> Recording:
        with self._lock:
            data = b"".join(self.chunks)
            arrivals, ends = np.array(self.arrivals), np.array(self.ends, np.int64)
        usable = len(data) // 2 * 2
        return Recording(np.frombuffer(data[:usable], np.int16).copy(), arrivals, ends)


@contextlib.contextmanager
def recording(server: PulseServer, sink: str = "spk") -> Iterator[Recorder]:
    command = [
        _binary("parec"), "-d", f"{sink}.monitor", "--raw", "--format=s16le",
        f"--rate={RATE}", "--channels=1", "--latency-msec=10",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=server.env, stdout=subprocess.PIPE)
    recorder = Recorder(process)
    reader = threading.Thread(target=recorder._read, name="parec", daemon=True)
    reader.start()
    try:
        yield recorder
    finally:
        terminate(process)
        reader.join(seconds(5))


class PipeSource:
    """A PulseAudio source fed by the test through a FIFO (``module-pipe-source``): silence,
    and a 1 kHz beep whenever asked, written in 10 ms chunks at their due time, so the
    monotonic time of each beep's first sample is known. ``speed`` above 1 writes that much
    faster than real time: a microphone whose clock runs fast against the speaker's."""

    CHUNK = RATE // 100

    def __init__(self, server: PulseServer, name: str = "voice", speed: float = 1.0) -> None:
        self.name = name
        self.speed = speed
        self.fifo = server.runtime / f"{name}.fifo"
        server.pactl(
            "load-module", "module-pipe-source", f"source_name={name}", f"file={self.fifo}",
            "format=s16le", f"rate={RATE}", "channels=1",
        )  # fmt: skip
        self.onsets: list[float] = []
        self._beep_at: list[int] = []  # chunk numbers where a beep starts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write, name="pipe source", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beep_every(self, period: float, length: float = 0.1) -> None:
        """From the next second on: a beep of ``length`` s every ``period`` s."""
        self._period = round(period * 100)
        self._length = round(length * 100)

    def _write(self) -> None:
        tone = (np.sin(2 * np.pi * 1000 * np.arange(self.CHUNK) / RATE) * 12_000).astype(np.int16)
        silence = np.zeros(self.CHUNK, np.int16)
        fd = os.open(self.fifo, os.O_WRONLY)
        try:
            start = time.monotonic()
            index = 0
            while not self._stop.is_set():
                due = start + index * 0.01 / self.speed
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                period = getattr(self, "_period", 0)
                phase = index % period if period else -1
                loud = period and index >= 100 and phase < self._length
                if loud and phase == 0:
                    self.onsets.append(due)
                os.write(fd, (tone if loud else silence).tobytes())
                index += 1
        except BrokenPipeError:  # the server went first
            pass
        finally:
            os.close(fd)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(seconds(5))


def onsets(recording: Recording, *, after: float = 0.0, gap: float = 0.5) -> list[float]:
    """Monotonic times where sound starts (a 5 ms window over a quarter of the loudest)
    after ``gap`` s of quiet."""
    window = RATE // 200
    if len(recording.samples) < window:
        return []
    summed = np.concatenate([[0], np.cumsum(np.abs(recording.samples.astype(np.int64)))])
    level = (summed[window:] - summed[:-window]) / window
    loud = (level > max(level.max() / 4, 500)).astype(np.int8)
    change = np.diff(np.concatenate([[0], loud, [0]]))
    found: list[float] = []
    quiet_since = -gap * RATE
    for rise, fall in zip(np.flatnonzero(change == 1), np.flatnonzero(change == -1), strict=True):
        if rise - quiet_since >= gap * RATE:
            moment = recording.time_of(int(rise))
            if moment >= after:
                found.append(moment)
        quiet_since = fall
    return found


def dominant_frequency(samples: npt.NDArray[np.int16]) -> float:
    """The strongest frequency in ``samples`` (48 kHz), to a fraction of a hertz
    (the peak's bin refined by the neighbours' quadratic fit)."""
    windowed = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(windowed))
    peak = int(np.argmax(spectrum[1:])) + 1
    left, mid, right = np.log(spectrum[peak - 1 : peak + 2] + 1e-9)
    shift = 0.5 * (left - right) / (left - 2 * mid + right)
    return float((peak + shift) * RATE / len(samples))
