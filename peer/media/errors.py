"""Errors of the media pieces, all under the package root ``MeshpeerError``."""

from __future__ import annotations

from peer.errors import MeshpeerError


class MediaError(MeshpeerError):
    """Base of every error raised on purpose by ``peer.media``."""


class MediaSourceError(MediaError):
    """A local source cannot be opened (bad spec string, no camera, unreadable file)."""


class DisplayError(MediaError):
    """The ``--display`` window cannot be opened (no X display)."""
