"""Why the server ended or refused a connection: the server's own domain enums.

The wire protocol's codes (``ErrorCode``, ``CloseCode``) are in :mod:`signaling.protocol`,
shared with the agent; these never go on the wire. The connection and the admission rules
decide them, and :mod:`signaling.metrics` counts them as labels.
"""

from __future__ import annotations

from enum import StrEnum


class LeaveReason(StrEnum):
    """Why a joined peer left: the ``reason`` label of ``meshpeer_leaves_total``."""

    CLOSED = "closed"  # the client sent a close frame
    DROPPED = "dropped"  # the TCP connection ended without a close frame
    HEARTBEAT = "heartbeat"  # no pong within the heartbeat timeout
    UNRESPONSIVE = "unresponsive"  # failed a liveness probe when its ID was asked for
    SLOW = "slow"  # its outgoing queue overflowed
    TOO_BIG = "too-big"  # sent a frame over the hard transport limit
    REPLACED = "replaced"  # the same peer resumed on a new connection
    SHUTDOWN = "shutdown"  # the server is stopping


class Refusal(StrEnum):
    """Why a WebSocket upgrade was refused: the ``reason`` label of ``meshpeer_refused_total``."""

    ORIGIN = "origin"  # HTTP 403: a browser Origin not in --allow-origin
    IP_CONNECTIONS = "ip-connections"  # HTTP 429: too many open connections from one address
    IP_RATE = "ip-rate"  # HTTP 429: too many new connections a minute from one address
