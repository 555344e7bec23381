"""The machine's audio inputs and outputs and its cameras, by the names the flags accept
(``meshpeer devices``, ``--audio mic:NAME``, ``--speaker NAME``, ``--video webcam:PATH``).

On a PulseAudio or PipeWire desktop the names are the sound server's own sinks and sources:
PortAudio 19.6 reaches the server through ALSA's pulse plugin and sees only ``pulse`` and
``default``, so a stream is pointed at a sink or source by name through libpulse's
``PULSE_SINK``/``PULSE_SOURCE`` (read when the plugin opens its connection, see
:func:`opening`). The server's list comes from ``pactl`` (``pulseaudio-utils``, which
PipeWire's pulse server answers too): one subprocess, no Python binding to depend on.
Without a sound server, the names are PortAudio's devices.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peer.media.errors import MediaSourceError

__all__ = [
    "AudioDevice",
    "Camera",
    "Direction",
    "audio_devices",
    "cameras",
    "check_audio_device",
    "open_stream",
    "opening",
    "portaudio",
]

log = logging.getLogger(__name__)

_PACTL_TIMEOUT = 5.0
_RATE = 48_000
_BLOCK = 960  # 20 ms
#: Seconds of sound queued ahead for the card. PortAudio's "low" (40 ms through ALSA's
#: pulse plugin) ran dry again and again on a busy machine, and each time the card plays
#: silence the whole room is heard later (measured on two oversubscribed cores: 4 to 7 of
#: 48 thousand samples a second played at 40 ms, 44 at 60 ms, 48 at 150 ms). Input keeps
#: "low": a larger input buffer makes the sound server deliver in larger pieces.
_OUTPUT_LATENCY = 0.06
#: Streams are opened one at a time: the environment that names their device is the process's.
_OPENING = threading.Lock()


class Direction(enum.Enum):
    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True)
class AudioDevice:
    """One audio input or output; ``name`` is what ``--audio mic:NAME``/``--speaker NAME`` take."""

    name: str
    description: str
    direction: Direction
    sound_server: bool  # a PulseAudio/PipeWire sink or source (else a PortAudio device)
    default: bool = False


@dataclass(frozen=True)
class Camera:
    path: str  # what --video webcam:PATH takes
    name: str


def _pactl(*args: str) -> str | None:
    """``pactl`` output, or None when there is no pactl or no sound server answering."""
    if shutil.which("pactl") is None:
        return None
    try:
        done = subprocess.run(
            ["pactl", *args], capture_output=True, text=True, timeout=_PACTL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("pactl %s: %r", " ".join(args), exc)
        return None
    return done.stdout if done.returncode == 0 else None


def _server_devices() -> list[AudioDevice] | None:
    """The sound server's sinks and sources, or None when no server answers."""
    info = _pactl("-f", "json", "info")
    if info is None:
        return None
    defaults: dict[str, Any] = json.loads(info)
    found: list[AudioDevice] = []
    for kind, direction, default in (
        ("sources", Direction.INPUT, defaults.get("default_source_name")),
        ("sinks", Direction.OUTPUT, defaults.get("default_sink_name")),
    ):
        listed: list[dict[str, Any]] = json.loads(_pactl("-f", "json", "list", kind) or "[]")
        for item in listed:
            name = str(item.get("name", ""))
            description = str(item.get("description", ""))
            found.append(AudioDevice(name, description, direction, True, name == default))
    return found


#: alsa-lib's error handler type (file, line, function, err, fmt, ...): a no-op one is set.
_ALSA_HANDLER = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
)
_quiet_alsa: Any = None


def _silence_alsa() -> None:
    """alsa-lib prints every underrun it recovers from ("snd_pcm_recover) underrun
    occurred") on stderr, where a command's output is one line per error; the speaker and
    microphone count their underruns themselves (logged when they close)."""
    global _quiet_alsa
    if _quiet_alsa is not None:
        return
    try:
        alsa = ctypes.CDLL("libasound.so.2")
    except OSError:
        return
    _quiet_alsa = _ALSA_HANDLER(lambda *_: None)
    alsa.snd_lib_error_set_handler(_quiet_alsa)


def portaudio() -> Any:
    """The ``sounddevice`` module; MediaSourceError when PortAudio is not installed."""
    try:
        import sounddevice
    except OSError as exc:  # the module is there, the C library not
        raise MediaSourceError(f"no PortAudio for sound (Debian: libportaudio2): {exc}") from exc
    _silence_alsa()
    return sounddevice


def _portaudio_devices() -> list[AudioDevice]:
    sd = portaudio()
    found: list[AudioDevice] = []
    listed: Any = sd.query_devices()
    default_in, default_out = sd.default.device
    for index, item in enumerate(listed):
        name = str(item["name"])
        host = str(sd.query_hostapis(item["hostapi"])["name"])
        if item["max_input_channels"] > 0:
            found.append(AudioDevice(name, host, Direction.INPUT, False, index == default_in))
        if item["max_output_channels"] > 0:
            found.append(AudioDevice(name, host, Direction.OUTPUT, False, index == default_out))
    return found


def audio_devices() -> list[AudioDevice]:
    """The sound server's sinks and sources when one answers, else PortAudio's devices."""
    server = _server_devices()
    return server if server is not None else _portaudio_devices()


def cameras() -> list[Camera]:
    """``/dev/video*`` with the driver's name for each (``/sys/class/video4linux``)."""
    found: list[Camera] = []
    for path in sorted(Path("/dev").glob("video*"), key=lambda p: (len(p.name), p.name)):
        name_file = Path("/sys/class/video4linux") / path.name / "name"
        try:
            name = name_file.read_text(encoding="utf-8").strip()
        except OSError:
            name = ""
        found.append(Camera(str(path), name))
    return found


def check_audio_device(name: str, direction: Direction) -> list[AudioDevice]:
    """The devices, after checking that ``name`` (empty: the default) is one of them for
    ``direction``; MediaSourceError names the ones there are."""
    devices = audio_devices()
    if not name:
        return devices
    fitting = [d for d in devices if d.direction is direction]
    if any(d.name == name for d in fitting):
        return devices
    what = "audio input" if direction is Direction.INPUT else "audio output"
    known = ", ".join(d.name for d in fitting) or "none"
    raise MediaSourceError(f"no {what} named {name!r} (there are: {known}; see meshpeer devices)")


def open_stream(name: str, direction: Direction, callback: Callable[..., None]) -> Any:
    """A started 48 kHz s16 PortAudio stream in 20 ms blocks on device ``name`` (empty: the
    default): mono in, stereo out, ``callback`` on PortAudio's thread. MediaSourceError,
    one line, when the device is missing or busy."""
    sd = portaudio()
    what = "microphone" if direction is Direction.INPUT else "speaker"
    shown = name or f"the default {direction.value}"
    with opening(name, direction) as device:
        kind = sd.InputStream if direction is Direction.INPUT else sd.OutputStream
        try:
            stream = kind(
                samplerate=_RATE,
                blocksize=_BLOCK,
                channels=1 if direction is Direction.INPUT else 2,
                dtype="int16",
                device=device,
                latency="low" if direction is Direction.INPUT else _OUTPUT_LATENCY,
                callback=callback,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise MediaSourceError(f"cannot open the {what} {shown}: {exc}") from exc
    log.info("%s: %s at %d Hz (latency %.0f ms)", what, shown, _RATE, stream.latency * 1e3)
    return stream


@contextlib.contextmanager
def opening(name: str, direction: Direction) -> Iterator[str | None]:
    """While opening a stream on device ``name`` (empty: the default): yields the PortAudio
    device to open (None: PortAudio's default). A sound server's sink or source is reached
    through PortAudio's ``pulse`` device with ``PULSE_SINK``/``PULSE_SOURCE`` naming it for
    the duration of the open."""
    devices = check_audio_device(name, direction)
    on_server = any(d.sound_server for d in devices)
    if not name or not on_server:
        yield name or None
        return
    variable = "PULSE_SOURCE" if direction is Direction.INPUT else "PULSE_SINK"
    with _OPENING:
        before = os.environ.get(variable)
        os.environ[variable] = name
        try:
            yield "pulse"
        finally:
            if before is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = before


def listing() -> str:
    """``meshpeer devices``: every input, output and camera, with the flag that picks it."""
    lines: list[str] = []
    devices = audio_devices()
    server = any(d.sound_server for d in devices)
    source = "sound server" if server else "PortAudio"
    for direction, title, flag in (
        (Direction.INPUT, "audio inputs", "--audio mic:NAME"),
        (Direction.OUTPUT, "audio outputs", "--speaker NAME"),
    ):
        lines.append(f"{title} ({source}; {flag}):")
        chosen = [d for d in devices if d.direction is direction]
        for device in chosen:
            mark = " (default)" if device.default else ""
            lines.append(f"  {device.name}{mark}  {device.description}")
        if not chosen:
            lines.append("  none")
    lines.append("cameras (--video webcam:PATH):")
    lines.extend(f"  {camera.path}  {camera.name}" for camera in cameras())
    if not lines[-1].startswith("  "):
        lines.append("  none")
    return "\n".join(lines)
