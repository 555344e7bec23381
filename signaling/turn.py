"""Per-peer, time-limited TURN credentials in coturn's REST convention (``use-auth-secret``).

The TURN server and this server share a secret; nothing else is shared and nothing is
stored: the username ``"<unix expiry>:<peer ID>"`` carries its own expiry, and the password
is ``base64(HMAC-SHA1(secret, username))``, which coturn recomputes. Pure: the caller
passes the time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from signaling.ice import IceServer

#: Default lifetime of minted credentials, in seconds: a TURN allocation made with them
#: can be refreshed while they are valid; a rejoin brings fresh ones.
DEFAULT_TTL = 3600.0


def turn_credentials(secret: bytes, peer_id: str, expires: int) -> tuple[str, str]:
    """``(username, credential)`` valid until Unix time ``expires``."""
    username = f"{expires}:{peer_id}"
    digest = hmac.new(secret, username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


@dataclass(frozen=True, slots=True)
class TurnMinter:
    """The ``--turn-url``s, with credentials minted for whoever asks."""

    urls: Sequence[IceServer]  # turn:/turns: URLs without credentials
    secret: bytes
    ttl: float = DEFAULT_TTL

    def expiry(self, now: float, until: float | None = None) -> int:
        """When credentials minted at ``now`` expire: ``ttl`` later, but never after ``until``
        (when the access token they are minted for stops being accepted)."""
        return int(now + self.ttl if until is None else min(now + self.ttl, until))

    def servers_for(
        self, peer_id: str, now: float, until: float | None = None
    ) -> tuple[IceServer, ...]:
        """Every TURN URL with credentials for ``peer_id``, valid until ``expiry()``."""
        username, credential = turn_credentials(self.secret, peer_id, self.expiry(now, until))
        return tuple(IceServer(server.url, username, credential) for server in self.urls)

    def refresh_after(self, now: float, until: float | None = None) -> float | None:
        """Seconds until fresh credentials are due (half their lifetime), or None when those
        minted at ``now`` already last until ``until``: none minted later could last longer."""
        if until is not None and now + self.ttl >= until:
            return None
        return self.ttl / 2
