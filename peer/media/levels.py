"""Who is speaking, and who is muted: audio levels and a tile's markers, for the mosaic.

Pure: the caller passes the samples and the time. A level is the RMS of a block in dBFS
mapped onto 0..1 (``shown_level``: ``FLOOR_DB`` and below is 0, full scale is 1), so a
bar drawn from it moves as loudness is heard rather than as amplitude. The meter follows
a louder block at once (attack) and falls back over ``RELEASE`` seconds (release).

A peer's microphone is "muted" when nothing audible came from it for ``QUIET_AFTER``
seconds: no audio track, no frame, or only silence below ``SILENT_DB`` (what a muted
agent or browser sends: the track stays and carries zeros). A camera is "off" when no
picture came for as long, or the picture is black (what a stopped camera sends, here and
in browsers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: The quietest level shown: -60 dBFS and below read as 0.
FLOOR_DB = -60.0
#: Seconds the meter takes to fall from full scale to 0 once the sound stops.
RELEASE = 0.3
#: A level above this is speech (the tile's ring); about -39 dBFS.
SPEAKING = 0.35
#: Blocks at or below this many dBFS are silence: a muted sender's zeros, not a quiet room
#: (one least significant bit of 16-bit audio is -90 dBFS; room noise is -70..-50).
SILENT_DB = -80.0
#: Seconds without anything audible (or without a picture) before the marker shows.
QUIET_AFTER = 1.0
#: A picture whose brightest 1% is at most this (of 255) is black: a stopped camera.
BLACK = 24


def dbfs(samples: npt.NDArray[np.generic]) -> float:
    """The RMS of a block of samples in dBFS (integers at their type's full scale, floats
    in -1..1); -inf for zeros."""
    if samples.size == 0:
        return -math.inf
    values = samples.astype(np.float64)
    if samples.dtype.kind == "i":  # signed integers: full scale is the type's range
        values /= float(2 ** (8 * samples.dtype.itemsize - 1))
    rms = math.sqrt(float(np.mean(values * values)))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def shown_level(db: float) -> float:
    """0..1 for a loudness in dBFS: ``FLOOR_DB`` and below is 0, full scale 1."""
    return min(1.0, max(0.0, 1 - db / FLOOR_DB))


def is_black(image: npt.NDArray[np.uint8]) -> bool:
    """A black picture (BGR or luma): what a stopped camera sends."""
    return image.size > 0 and float(np.percentile(image, 99)) <= BLACK


@dataclass
class LevelMeter:
    """One track's level as shown: instant attack, linear release over ``RELEASE`` s; and
    when something audible last came (``heard_at``), for the muted marker."""

    _value: float = 0.0
    _at: float = 0.0
    heard_at: float | None = None

    def update(self, db: float, now: float) -> None:
        """A block of ``db`` dBFS heard at ``now``."""
        self._value = max(shown_level(db), self.value(now))
        self._at = now
        if db > SILENT_DB:
            self.heard_at = now

    def value(self, now: float) -> float:
        """The level shown at ``now``."""
        return max(0.0, self._value - max(0.0, now - self._at) / RELEASE)

    def speaking(self, now: float) -> bool:
        return self.value(now) > SPEAKING

    def quiet(self, now: float) -> bool:
        """Nothing audible for ``QUIET_AFTER`` s (or ever): the muted marker."""
        return self.heard_at is None or now - self.heard_at > QUIET_AFTER
