"""Telling which decoded VP8 frames were keyframes, for tests of the shared encoder.

libvpx's decoder (aiortc's) leaves ``key_frame`` unset on what it decodes, so
``label_vp8_keyframes`` wraps aiortc's ``Vp8Decoder.decode`` to read the bit that says
so in the VP8 frame header (RFC 6386 9.1: bit 0 of the first byte, 0 for a keyframe) and
marks the decoded frames ``pict_type = I``. The decoding itself is untouched.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import av
from aiortc.codecs import vpx

from peer.events import RemoteTrack

__all__ = ["Keyframes", "label_vp8_keyframes"]


@contextlib.contextmanager
def label_vp8_keyframes() -> Iterator[None]:
    original = vpx.Vp8Decoder.decode

    def decode(self: vpx.Vp8Decoder, encoded_frame: Any) -> list[av.frame.Frame]:
        frames = original(self, encoded_frame)
        if encoded_frame.data and not encoded_frame.data[0] & 1:
            for frame in frames:
                frame.pict_type = av.video.frame.PictureType.I  # type: ignore[attr-defined]
        return frames

    vpx.Vp8Decoder.decode = decode  # type: ignore[method-assign]
    try:
        yield
    finally:
        vpx.Vp8Decoder.decode = original  # type: ignore[method-assign]


class Keyframes:
    """A FrameConsumer keeping, per sending peer, when each video frame and each keyframe
    (labelled by ``label_vp8_keyframes``) was decoded (time.monotonic())."""

    def __init__(self) -> None:
        self.frames: dict[str, list[float]] = {}
        self.keys: dict[str, list[float]] = {}

    def put_frame(self, track: RemoteTrack, frame: object) -> None:
        if track.kind != "video":
            return
        now = time.monotonic()
        self.frames.setdefault(str(track.peer), []).append(now)
        if getattr(frame, "pict_type", None) == av.video.frame.PictureType.I:
            self.keys.setdefault(str(track.peer), []).append(now)

    def track_ended(self, track: RemoteTrack) -> None:
        pass

    def keys_between(self, peer: str, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.keys.get(peer, []))
