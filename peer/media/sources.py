"""The local media one agent publishes, picked by one spec string per kind.

Video: ``synthetic``, ``webcam`` / ``webcam:/dev/videoN``, ``file:PATH`` or a URL PyAV
opens (looped), ``none``. Audio: ``tone``, ``mic`` / ``mic:DEVICE`` (the system's input,
:mod:`peer.media.microphone`), ``file:PATH`` / URL, ``none``. When video and
audio name the same file, one player feeds both tracks so they stay in sync.

Every frame leaves in the format the encoders want (video yuv420p, audio s16 stereo
48 kHz), converted once here rather than by every connection's encoder.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path

from aiortc.mediastreams import MediaStreamTrack

from peer.media.errors import MediaSourceError
from peer.media.player import Player
from peer.media.synthetic import SyntheticVideoTrack, ToneAudioTrack

__all__ = [
    "LocalMedia",
    "MediaSourceError",
    "SourceKind",
    "SourceSpec",
    "VideoSettings",
    "open_local_media",
    "parse_source_spec",
]

log = logging.getLogger(__name__)

DEFAULT_CAMERA = "/dev/video0"


@dataclass(frozen=True)
class VideoSettings:
    """Size and rate of generated (synthetic) and requested (webcam) video."""

    width: int = 640
    height: int = 480
    fps: int = 30

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise MediaSourceError(
                f"video size must be even and at least 16x16, got {self.width}x{self.height}"
            )
        if not 1 <= self.fps <= 120:
            raise MediaSourceError(f"video fps must be within 1..120, got {self.fps}")


class SourceKind(enum.Enum):
    NONE = "none"
    SYNTHETIC = "synthetic"
    TONE = "tone"
    WEBCAM = "webcam"
    MIC = "mic"
    FILE = "file"  # a path or any URL PyAV opens


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind
    target: str = ""  # the device, path or URL


_VIDEO_KINDS = {SourceKind.NONE, SourceKind.SYNTHETIC, SourceKind.WEBCAM, SourceKind.FILE}
_AUDIO_KINDS = {SourceKind.NONE, SourceKind.TONE, SourceKind.MIC, SourceKind.FILE}
_EXPECTED = {
    "video": "synthetic, webcam, webcam:/dev/videoN, file:PATH, a URL or none",
    "audio": "tone, mic, mic:DEVICE, file:PATH, a URL or none",
}


def parse_source_spec(spec: str, kind: str) -> SourceSpec:
    """Parses a ``--video``/``--audio`` string (``kind`` is "video" or "audio")."""
    text = spec.strip()
    if text.startswith("file:"):
        path = text.removeprefix("file:")
        parsed = SourceSpec(SourceKind.FILE, path) if path else None
    elif "://" in text:
        parsed = SourceSpec(SourceKind.FILE, text)
    elif text == "webcam" or text.startswith("webcam:"):
        device = text.removeprefix("webcam").removeprefix(":") or DEFAULT_CAMERA
        parsed = SourceSpec(SourceKind.WEBCAM, device)
    elif text == "mic" or text.startswith("mic:"):
        parsed = SourceSpec(SourceKind.MIC, text.removeprefix("mic").removeprefix(":"))
    elif text in {"none", "synthetic", "tone"}:
        parsed = SourceSpec(SourceKind(text))
    else:
        parsed = None
    allowed = _VIDEO_KINDS if kind == "video" else _AUDIO_KINDS
    if parsed is None or parsed.kind not in allowed:
        raise MediaSourceError(f"unknown {kind} source {spec!r}; expected {_EXPECTED[kind]}")
    return parsed


class LocalMedia:
    """The local tracks one agent publishes to every connection (through a MediaRelay)."""

    def __init__(
        self,
        video: MediaStreamTrack | None,
        audio: MediaStreamTrack | None,
        players: list[Player] | None = None,
    ) -> None:
        self.video = video
        self.audio = audio
        self._players = players or []

    def stop(self) -> None:
        """Stop every track (devices and files close); the agent never does it for you."""
        for track in (self.video, self.audio):
            if track is not None:
                track.stop()
        for player in self._players:
            player.stop()


def open_local_media(
    video: str,
    audio: str,
    *,
    label: str,
    settings: VideoSettings | None = None,
) -> LocalMedia:
    """Opens the sources named by ``video`` and ``audio``; MediaSourceError says what failed."""
    settings = settings or VideoSettings()
    video_spec = parse_source_spec(video, "video")
    audio_spec = parse_source_spec(audio, "audio")
    players: list[Player] = []
    video_track: MediaStreamTrack | None = None
    audio_track: MediaStreamTrack | None = None
    try:
        if video_spec.kind is SourceKind.SYNTHETIC:
            video_track = SyntheticVideoTrack(
                label, width=settings.width, height=settings.height, fps=settings.fps
            )
        elif video_spec.kind is SourceKind.WEBCAM:
            camera = _open_camera(video_spec.target, settings)
            players.append(camera)
            video_track = camera.video
        elif video_spec.kind is SourceKind.FILE:
            shared = audio_spec == video_spec
            player = _open_file(video_spec.target, want_video=True, want_audio=shared)
            players.append(player)
            video_track = player.video
            if shared:
                audio_track = player.audio
        if audio_spec.kind is SourceKind.TONE:
            audio_track = ToneAudioTrack(label)
        elif audio_spec.kind is SourceKind.MIC:
            from peer.media.microphone import open_microphone

            audio_track = open_microphone(audio_spec.target)
        elif audio_spec.kind is SourceKind.FILE and audio_track is None:
            player = _open_file(audio_spec.target, want_video=False, want_audio=True)
            players.append(player)
            audio_track = player.audio
    except BaseException:
        if video_track is not None:
            video_track.stop()
        for opened in players:
            opened.stop()
        raise
    log.info("local media: video %s, audio %s", video_spec.kind.value, audio_spec.kind.value)
    return LocalMedia(video_track, audio_track, players)


def _open_file(target: str, *, want_video: bool, want_audio: bool) -> Player:
    if "://" not in target and not Path(target).is_file():
        raise MediaSourceError(f"no such media file: {target}")
    return Player(target, want_video=want_video, want_audio=want_audio, loop=True)


def _open_camera(device: str, settings: VideoSettings) -> Player:
    if not Path(device).exists():
        raise MediaSourceError(f"no camera at {device}: the device does not exist")
    options = {
        "video_size": f"{settings.width}x{settings.height}",
        "framerate": str(settings.fps),
    }
    try:
        return Player(
            device,
            want_video=True,
            want_audio=False,
            loop=False,
            live=True,
            input_format="v4l2",
            options=options,
        )
    except MediaSourceError as exc:
        raise MediaSourceError(f"no usable camera at {device}: {exc}") from exc
