"""ICE server settings from command-line strings, and the aiortc configuration built from them.

Default is no ICE server at all: aiortc's own default is a public STUN server, and an
unreachable one costs ~5 s per offer and per answer (docs: PITFALLS). On loopback and LANs
host candidates are all that is needed.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiortc import RTCConfiguration, RTCIceServer

from peer.errors import MeshpeerError
from signaling import ice
from signaling.ice import IceServer

__all__ = ["IceServer", "IceServerError", "parse_ice_server", "rtc_configuration"]


class IceServerError(MeshpeerError):
    """An --ice-server value that is not a stun:, turn: or turns: URL."""


def parse_ice_server(text: str) -> IceServer:
    """The shared parser (signaling.ice), its error re-rooted under MeshpeerError."""
    try:
        return ice.parse_ice_server(text)
    except ice.IceServerError as exc:
        raise IceServerError(str(exc)) from None


def rtc_configuration(servers: Iterable[IceServer]) -> RTCConfiguration:
    """An explicit list, possibly empty, so aiortc never falls back to its public STUN server."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s.url, username=s.username, credential=s.credential) for s in servers
        ]
    )
