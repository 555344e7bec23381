"""The one exception root of package ``peer``."""

from __future__ import annotations


class MeshpeerError(Exception):
    """Base of every error the peer agent raises on purpose (bad input, refused join, ...)."""
