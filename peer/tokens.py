"""What the agent reads of its own access token: the peer ID and room it admits.

Read without verifying, on purpose: the server verifies (``signaling.auth``); a client
only takes its defaults for ``--peer-id`` and the room from the claims docs/PROTOCOL.md
("Access tokens") names, ``sub`` and ``room``. Kept here so the agent needs nothing of
the server's verifier.
"""

from __future__ import annotations

import jwt

__all__ = ["read_claims"]


def read_claims(token: str) -> tuple[str | None, str | None]:
    """``(sub, room)`` of a token, unverified: a client reading its own token's defaults."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None, None
    sub, room = claims.get("sub"), claims.get("room")
    return (sub if isinstance(sub, str) else None), (room if isinstance(room, str) else None)
