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
    """A STUN or TURN server as peers are handed it: one URL, with credentials for TURN."""

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


def parse_ice_server(text: str, *, minted: bool = False) -> IceServer:
    """``stun:host[:port]``, ``turn:user:pass@host[:port][?transport=tcp]`` or ``turns:``.

    ``minted``: a TURN URL without credentials, whose credentials the server mints per peer
    (``--turn-url``).
    """
    match = _URL.match(text.strip())
    if match is None:
        expected = (
            "turn:host:port[?transport=udp|tcp]"
            if minted
            else ("stun:host:port or turn:user:pass@host:port")
        )
        raise IceServerError(f"bad ICE server {_redact(text)!r}: expected {expected}")
    scheme, user, password = match["scheme"], match["user"], match["password"]
    if minted:
        if not scheme.startswith("turn") or user is not None:
            raise IceServerError(
                f"--turn-url takes turn: or turns: URLs without credentials, got {_redact(text)!r}"
            )
    elif scheme.startswith("turn") and user is None:
        raise IceServerError(f"TURN server {match['host']!r} needs user:pass@ before the host")
    if scheme.startswith("stun") and user is not None:
        raise IceServerError(f"STUN server {match['host']!r} takes no credentials")
    port = match["port"]
    if port is not None and not 0 < int(port) < 65536:
        raise IceServerError(f"bad port {port} in ICE server {match['host']!r}")
    url = f"{scheme}:{match['host']}" + (f":{port}" if port else "") + (match["query"] or "")
    return IceServer(url, user, password)


def _redact(text: str) -> str:
    """``text`` with any ``user:pass@`` replaced, so an error message never shows a password."""
    return re.sub(r"(?<=:)[^:@/]*:[^@/]*@", "***@", text)


def ice_servers_from_json(value: Any) -> tuple[IceServer, ...]:
    """The ``iceServers`` of a ``peer-list`` (RTCIceServer dictionaries), one entry per URL.

    Lenient, as a client must be with what a server sends: entries it cannot use (not an
    object, no string ``urls``, a URL it does not recognise) are skipped.
    """
    if not isinstance(value, list):
        return ()
    servers: list[IceServer] = []
    for entry in value:
        if not isinstance(entry, dict):
            continue
        urls = entry.get("urls")
        username, credential = entry.get("username"), entry.get("credential")
        if not isinstance(username, str):
            username = None
        if not isinstance(credential, str):
            credential = None
        for url in [urls] if isinstance(urls, str) else urls if isinstance(urls, list) else []:
            match = _URL.match(url) if isinstance(url, str) else None
            if match is not None and match["user"] is None:
                servers.append(IceServer(url, username, credential))
    return tuple(servers)
