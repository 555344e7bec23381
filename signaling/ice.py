"""ICE server URLs as users type them, for both the peer agent and the browser page.

``stun:host:port``, ``turn:user:pass@host:port`` and ``turns:...``: credentials ride in the
URL on the command line but travel as separate fields (RTCIceServer) everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

SCHEMES = ("stun", "stuns", "turn", "turns")


class IceServerError(ValueError):
    """An ICE server URL that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class IceServer:
    url: str  # without credentials
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The browser's RTCIceServer dictionary."""
        obj: dict[str, Any] = {"urls": self.url}
        if self.username is not None:
            obj["username"] = self.username
        if self.credential is not None:
            obj["credential"] = self.credential
        return obj


def parse_ice_server(text: str) -> IceServer:
    scheme, sep, rest = text.partition(":")
    if not sep or scheme.lower() not in SCHEMES or not rest:
        raise IceServerError(
            f"ICE server {text!r} must look like stun:host:port or turn:user:pass@host:port"
        )
    scheme = scheme.lower()
    rest = rest.removeprefix("//")
    username = credential = None
    if "@" in rest:
        if scheme.startswith("stun"):
            raise IceServerError(f"STUN server {text!r} takes no credentials")
        userinfo, _, rest = rest.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if not user or not colon:
            raise IceServerError(f"TURN server {text!r}: credentials must be user:pass@")
        username, credential = unquote(user), unquote(password)
    elif scheme.startswith("turn"):
        raise IceServerError(f"TURN server {text!r} needs credentials: turn:user:pass@host:port")
    if not rest or rest.startswith(":"):
        raise IceServerError(f"ICE server {text!r} has no host")
    return IceServer(f"{scheme}:{rest}", username, credential)
