"""Muting a local source without renegotiating: the track keeps its frames' pace and
timestamps, but while muted they are silence (audio) or black (video).

That is what browsers send for a disabled track, and the cheapest mute that keeps the
link: no SDP changes hands, the encoders and the receivers' jitter buffers keep running,
and unmuting is immediate (the next frame). The silence and the black picture are what a
receiver's mosaic reads as "mic off" and "cam off" (:mod:`peer.media.levels`).
"""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamTrack

#: Black in yuv420p's limited range: luma 16, chroma 128.
_BLACK_LUMA, _NEUTRAL_CHROMA = 16, 128


class MutableTrack(MediaStreamTrack):
    """``source``'s frames, or silence / black in their place while ``muted``. Stopping
    it leaves ``source`` to its owner (``LocalMedia.stop``)."""

    def __init__(self, source: MediaStreamTrack, *, muted: bool = False) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source
        self.muted = muted
        self._black: npt.NDArray[np.uint8] | None = None

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        frame = await self.source.recv()
        if not self.muted or not isinstance(frame, av.AudioFrame | av.VideoFrame):
            return frame  # type: ignore[return-value]  # a packet: passed through
        if isinstance(frame, av.AudioFrame):
            blank: av.AudioFrame | av.VideoFrame = _silence(frame)
        else:
            blank = av.VideoFrame.from_ndarray(self._black_for(frame), format="yuv420p")
        blank.pts = frame.pts
        blank.time_base = frame.time_base
        return blank

    def _black_for(self, frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
        width, height = frame.width // 2 * 2, frame.height // 2 * 2
        if self._black is None or self._black.shape != (height * 3 // 2, width):
            self._black = np.full((height * 3 // 2, width), _NEUTRAL_CHROMA, np.uint8)
            self._black[:height] = _BLACK_LUMA
        return self._black


def _silence(frame: av.AudioFrame) -> av.AudioFrame:
    """Zeros in ``frame``'s format, layout, rate and length."""
    zeros = np.zeros_like(frame.to_ndarray())
    silent = av.AudioFrame.from_ndarray(zeros, format=frame.format.name, layout=frame.layout.name)
    silent.sample_rate = frame.sample_rate
    return silent
