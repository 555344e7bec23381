"""ICE server settings from command-line strings, and the aiortc configuration built from them.

Default is no ICE server at all: aiortc's own default is a public STUN server, and an
unreachable one costs ~5 s per offer and per answer (docs: PITFALLS). On loopback and LANs
host candidates are all that is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aiortc import RTCConfiguration, RTCIceServer

from signaling.ice import IceServer, IceServerError, parse_ice_server

__all__ = ["IceServer", "IceServerError", "arrange", "parse_ice_server", "rtc_configuration"]


def _turn_rank(server: IceServer) -> int | None:
    """Preference among TURN URLs: UDP (fastest), then TCP, then TLS; None: aioice can't."""
    url = server.url
    tcp = url.endswith("?transport=tcp")
    if url.startswith("turns:"):
        return 2 if tcp or "?transport=" not in url else None  # aioice: TLS over TCP only
    if url.startswith("turn:"):
        return 1 if tcp else 0
    return None


def arrange(servers: Sequence[IceServer], attempt: int = 0) -> list[IceServer]:
    """``servers`` ordered for aioice, which uses only the first STUN and the first TURN URL.

    The first STUN URL given is kept first. TURN URLs go UDP, then TCP, then TLS (a network
    that blocks UDP often lets TCP or TLS through), stable within each kind; URLs aioice
    cannot use (``turns:`` over UDP) are left out. ``attempt`` (the how-manieth try of a
    connection that failed) rotates the TURN list, so each retry relays through the next
    URL: a retry after UDP failed goes over TCP.
    """
    stun = [s for s in servers if s.url.startswith(("stun:", "stuns:"))]
    ranked = [(rank, i, s) for i, s in enumerate(servers) if (rank := _turn_rank(s)) is not None]
    turn = [s for _, _, s in sorted(ranked, key=lambda item: (item[0], item[1]))]
    if turn:
        shift = attempt % len(turn)
        turn = turn[shift:] + turn[:shift]
    return stun + turn


def rtc_configuration(servers: Iterable[IceServer]) -> RTCConfiguration:
    """An explicit list, possibly empty, so aiortc never falls back to its public STUN server."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s.url, username=s.username, credential=s.credential) for s in servers
        ]
    )
