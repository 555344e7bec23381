"""Value types and metavars for command-line flags, for ``meshpeer serve``, ``join``,
``demo`` and ``token`` alike: a bad value becomes argparse's usage error (exit 2) naming the
rule, and a value's metavar names its unit, so ``--help`` reads the same everywhere."""

from __future__ import annotations

import argparse
import math


def number(text: str, kind: type[int] | type[float], low: float, inclusive: bool) -> float:
    """Parse a flag value; a bad one becomes argparse's usage error (exit code 2)."""
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not math.isfinite(value) or value < low or (value == low and not inclusive):
        bound = f"at least {low:g}" if inclusive else f"more than {low:g}"
        raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
    return value


def count(text: str) -> int:
    """An integer, at least 1."""
    return int(number(text, int, 1, inclusive=True))


def seconds(text: str) -> float:
    """A number of seconds, more than 0."""
    return number(text, float, 0, inclusive=False)


def cap(text: str) -> int:
    """An integer, 0 (no cap) or more."""
    return int(number(text, int, 0, inclusive=True))


def rate(text: str) -> float:
    """A number per second (or per the unit the flag names), more than 0."""
    return number(text, float, 0, inclusive=False)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``1h`` or ``7d``."""
    unit = _UNITS.get(text[-1:].lower())
    return seconds(text[:-1] if unit else text) * (unit or 1.0)


def port(text: str) -> int:
    """A TCP port, 0 to 65535."""
    value = int(number(text, int, 0, inclusive=True))
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {text}")
    return value


# Metavars: the value's unit in capitals, a rate as UNIT/S; tests/peer/test_help.py holds
# every command's help to them.
SECONDS = "SECONDS"  #: a plain number of seconds (:func:`seconds`)
DURATION = "DURATION"  #: seconds, or with a unit: 90s, 30m, 1h, 7d (:func:`duration`)
FPS = "FPS"  #: frames per second
MSG_PER_S = "MSG/S"  #: messages per second
BYTES_PER_S = "BYTES/S"  #: bytes per second
N_PER_MIN = "N/MIN"  #: a count per minute
BYTES = "BYTES"
MESSAGES = "MESSAGES"
PIXELS = "PIXELS"
N = "N"  #: a count
