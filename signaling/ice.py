"""ICE server URLs as users type them, for both the peer agent and the browser page.

``stun:host:port``, ``turn:user:pass@host:port[?transport=tcp]`` and ``turns:...``:
credentials ride in the URL on the command line but travel as separate fields
(RTCIceServer) everywhere else. Pure: the peer turns these into aiortc objects itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class IceServerError(ValueError):
    """An ICE server URL that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class IceServer:
    url: str  # without credentials: stun:host:port, turn:host:port?transport=tcp
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


_URL = re.compile(
    r"^(?P<scheme>stun|stuns|turn|turns):"
    r"(?:(?P<user>[^:@/]+):(?P<password>[^@/]*)@)?"
    r"(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+)"
    r"(?::(?P<port>\d{1,5}))?"
    r"(?P<query>\?transport=(?:udp|tcp))?$"
)


def parse_ice_server(text: str) -> IceServer:
    """``stun:host[:port]``, ``turn:user:pass@host[:port][?transport=tcp]`` or ``turns:``."""
    match = _URL.match(text.strip())
    if match is None:
        raise IceServerError(
            f"bad ICE server {text!r}: expected stun:host:port or turn:user:pass@host:port"
        )
    scheme, user, password = match["scheme"], match["user"], match["password"]
    if scheme.startswith("turn") and user is None:
        raise IceServerError(f"TURN server {match['host']!r} needs user:pass@ before the host")
    if scheme.startswith("stun") and user is not None:
        raise IceServerError(f"STUN server {match['host']!r} takes no credentials")
    port = match["port"]
    if port is not None and not 0 < int(port) < 65536:
        raise IceServerError(f"bad port {port} in ICE server {match['host']!r}")
    url = f"{scheme}:{match['host']}" + (f":{port}" if port else "") + (match["query"] or "")
    return IceServer(url, user, password)
