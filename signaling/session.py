"""One client connection as a pure state machine: frames in, decisions out.

The adapter feeds each received frame with the current time; the session answers
with what to do (ask the registry for a join, forward, reply with an error, close).
Size and rate limits live here so they are tested without sockets or clocks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import Enum
from typing import NamedTuple

from signaling.protocol import (
    DEFAULT_ROOM,
    SERVER_ONLY_TYPES,
    CloseCode,
    Error,
    ErrorCode,
    Join,
    PeerId,
    ProtocolError,
    RoomId,
    Routed,
    check_name,
    parse,
    peek_route,
    stamp_sender,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Server limits; defaults documented in docs/server.md and docs/PROTOCOL.md."""

    #: Largest frame accepted, in bytes. A 6-peer browser offer is 10+ KB.
    max_frame_bytes: int = 64 * 1024
    #: Peers per room: what a full mesh of browsers carries (each sends N-1 copies of
    #: every stream, each encoded apart); rooms of bots or data only can take more.
    max_peers: int = 8
    #: Seconds a new connection has to send ``join``.
    join_timeout: float = 10.0
    #: Seconds of silence before the server pings; no pong within half of it drops the client.
    heartbeat: float = 5.0
    #: Seconds an ID's holder has to answer a ping when someone else asks for its ID.
    probe_timeout: float = 2.0
    #: Sustained messages per second per connection, and the burst above it.
    rate: float = 100.0
    burst: int = 200
    #: Bytes per second a connection's messages may cost to deliver, sustained, and the
    #: burst above it: a broadcast costs its size times the members it reaches, a routed
    #: message its size. Far above signaling, even with ``max_peers`` raised to 32 (10 KB
    #: offers to 31 members every second is 310 KB/s); far below a 64 KiB broadcast to 31
    #: members at ``rate`` (200 MB/s).
    byte_rate: float = 512 * 1024
    byte_burst: int = 4 * 1024 * 1024
    #: Messages waiting to be sent to one client before it is dropped as too slow.
    send_queue: int = 512
    #: Open WebSockets per client address (0: no cap); more get HTTP 429.
    ip_connections: int = 50
    #: New WebSockets per client address per minute (0: no cap); more get HTTP 429.
    ip_connects_per_minute: int = 120

    def __post_init__(self) -> None:
        for name in ("max_frame_bytes", "max_peers", "burst", "byte_burst", "send_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("ip_connections", "ip_connects_per_minute"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no cap) or more, got {getattr(self, name)}")
        for name in ("join_timeout", "heartbeat", "probe_timeout", "rate", "byte_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class Phase(Enum):
    """AWAITING_JOIN -> JOINED -> CLOSING -> CLOSED; a failed join (bad, refused, too late)
    goes from AWAITING_JOIN to CLOSING. CLOSING: the server ends the connection, and
    nothing the client still sends is acted on; CLOSED: the socket is gone."""

    AWAITING_JOIN = "awaiting-join"
    JOINED = "joined"
    CLOSING = "closing"
    CLOSED = "closed"


# For the per-message path: looking an enum member up costs ~0.1 us on Python 3.11.
_JOINED, _CLOSING, _CLOSED = Phase.JOINED, Phase.CLOSING, Phase.CLOSED


@dataclass(frozen=True, slots=True)
class JoinRequest:
    join: Join
    room: RoomId
    #: Set by signaling.auth.authorize: Unix time the join's access token stops being
    #: accepted (its ``exp`` plus the leeway); what the server hands out for it (TURN
    #: credentials) must not outlive it. None without access tokens.
    admitted_until: float | None = None


class Forward(NamedTuple):
    """Relay ``data`` to ``to``, or to everyone else in the room when ``to`` is None.

    Immutable like the other decisions, but a NamedTuple: one is made for every relayed
    message, and a frozen dataclass costs three times as much to build.
    """

    type: str
    to: PeerId | None
    data: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``error`` to this client; close it afterwards when ``close`` is set."""

    error: Error
    close: CloseCode | None = None


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to do (a repeated rate-limit error is suppressed)."""


Decision = JoinRequest | Forward | Reply | Ignore


def error_reply(code: ErrorCode, message: str, close: CloseCode | None = None) -> Reply:
    return Reply(Error(code, message), close)


class Session:
    """One connection's conversation, from its first frame to its close: the phase, who it
    joined as and where (the one copy: the adapter's connection reads them from here),
    and its rate and byte budgets. The adapter feeds frames and timer expiries in and
    carries out the decisions that come back."""

    def __init__(
        self, limits: Limits, now: float, room: RoomId | None = None, token: str | None = None
    ) -> None:
        self.limits = limits
        self.phase = Phase.AWAITING_JOIN
        self.url_room = room
        self.url_token = token
        self.peer_id: PeerId | None = None
        self.room: RoomId | None = None
        # The token bucket's parameters, read once: _admit runs for every frame.
        self._burst = float(limits.burst)
        self._rate = limits.rate
        self._tokens = self._burst
        self._last = now
        self._throttled = False
        # The byte budget's bucket, in bytes: refilled by _admit, spent by _afford.
        self._byte_burst = float(limits.byte_burst)
        self._byte_rate = limits.byte_rate
        self._bytes = self._byte_burst
        self._bytes_throttled = False

    def joined(self, peer: PeerId, room: RoomId) -> None:
        """The registry admitted the join (this session's ``JoinRequest``)."""
        self.phase = Phase.JOINED
        self.peer_id = peer
        self.room = room

    def refused(self, error: Error, close: CloseCode) -> Reply:
        """The join was refused (its token, or the registry): tell the client and close. A
        join sent right behind this one must not get in."""
        self.phase = Phase.CLOSING
        return Reply(error, close)

    def join_timed_out(self) -> Reply | Ignore:
        """The join timer (``Limits.join_timeout``) expired: close unless a join came."""
        if self.phase is not Phase.AWAITING_JOIN:
            return Ignore()
        self.phase = Phase.CLOSING
        return error_reply(
            ErrorCode.JOIN_TIMEOUT,
            f"no 'join' within {self.limits.join_timeout:g} s",
            CloseCode.JOIN_TIMEOUT,
        )

    def leave(self) -> tuple[PeerId, RoomId] | None:
        """The membership to end, once (the connection's end and a shutdown may both ask):
        who and where, or None when there is none (never joined, or ended already). The
        connection is closing from then on: nothing the client sends is relayed."""
        peer, room = self.peer_id, self.room
        if peer is None or room is None:
            return None
        self.peer_id = None
        if self.phase is not Phase.CLOSED:
            self.phase = Phase.CLOSING
        return peer, room

    def closed(self) -> None:
        """The socket is gone."""
        self.phase = Phase.CLOSED

    def receive_binary(self, now: float) -> Reply | Ignore:
        """A binary frame: refused, and counted against the rate like any frame."""
        if self.phase is _CLOSING or self.phase is _CLOSED:
            return Ignore()
        if not self._admit(now):
            return self._rate_limited()
        return error_reply(ErrorCode.BINARY_FRAME, "binary frames are not part of the protocol")

    def _rate_limited(self) -> Reply | Ignore:
        """One ``rate-limited`` error per episode; the rest of the flood is dropped silently."""
        if self._throttled:
            return Ignore()
        self._throttled = True
        return error_reply(
            ErrorCode.RATE_LIMITED,
            f"more than {self.limits.rate:g} messages/s: dropping messages until you slow down",
        )

    def _admit(self, now: float) -> bool:
        """Take a token of the message rate; refill the byte budget too (one clock reading
        for both: every frame comes through here before it can cost bytes)."""
        elapsed = now - self._last
        self._last = now
        budget = self._bytes + elapsed * self._byte_rate
        self._bytes = budget if budget < self._byte_burst else self._byte_burst
        tokens = self._tokens + elapsed * self._rate
        if tokens > self._burst:
            tokens = self._burst
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            self._throttled = False
            return True
        self._tokens = tokens
        return False

    def receive(self, text: str, now: float, others: int = 1) -> Decision:
        """Decide on one text frame; ``others``: the members a broadcast would reach (the
        room's size but this peer), which prices it against the byte budget."""
        phase = self.phase
        if phase is _CLOSING or phase is _CLOSED:
            return Ignore()  # nothing the client still sends is acted on
        # Every frame costs a token, an oversized one too: its error must not be a way
        # around the rate limit (one error per flood, like any other).
        if not self._admit(now):
            return self._rate_limited()
        size, limit = len(text), self.limits.max_frame_bytes
        # A character is 1 to 4 UTF-8 bytes: encode only when the answer depends on it.
        if size > limit or (size * 4 > limit and len(text.encode()) > limit):
            return error_reply(
                ErrorCode.FRAME_TOO_LARGE,
                f"frame of {len(text.encode())} bytes is over the {self.limits.max_frame_bytes}"
                " byte limit",
            )
        # The common case (a valid offer, answer or candidate) skips building message objects;
        # everything else, errors included, takes the full parse.
        if phase is _JOINED:
            route = peek_route(text)
            if route is not None:
                kind, claimed, to = route
                if claimed == self.peer_id:  # the usual case: the client names itself
                    cost = size if text.isascii() else _utf8_len(text)
                    if self._afford(cost if to is not None else cost * others):
                        return Forward(kind, to, text)
                    return self._over_budget()
                return self._paid(self._forward(kind, claimed, to, text), text, others)
        try:
            message = parse(text)
        except ProtocolError as exc:
            if self._is_bad_join(text):
                self.phase = Phase.CLOSING
                return error_reply(exc.code, exc.message, CloseCode.BAD_JOIN)
            return error_reply(exc.code, exc.message)
        if self.phase is Phase.AWAITING_JOIN:
            if isinstance(message, Join):
                return self._join_request(message)
            return error_reply(ErrorCode.NOT_JOINED, "send 'join' before any other message")
        if isinstance(message, Join):
            return error_reply(ErrorCode.ALREADY_JOINED, f"already joined as '{self.peer_id}'")
        if not isinstance(message, Routed) or message.type in SERVER_ONLY_TYPES:
            return error_reply(
                ErrorCode.RESERVED_TYPE, f"'{_type_of(text)}' messages come from the server only"
            )
        forward = self._forward(message.type, message.sender, message.to, text)
        return self._paid(forward, text, others)

    def _paid(self, decision: Forward | Reply, text: str, others: int) -> Decision:
        """``decision`` if it is not a Forward or the byte budget pays for it (text's UTF-8
        size, times ``others`` for a broadcast)."""
        if type(decision) is not Forward:
            return decision
        cost = len(text) if text.isascii() else _utf8_len(text)
        if self._afford(cost if decision.to is not None else cost * others):
            return decision
        return self._over_budget()

    def _afford(self, cost: int) -> bool:
        """Take ``cost`` bytes from the byte budget (a token bucket refilled by ``_admit``).
        A cost above the whole burst (a large broadcast in a large room) passes on a full
        bucket and leaves it in debt, repaid before the next: it is never refused forever."""
        budget = self._bytes
        if budget >= cost or budget >= self._byte_burst:
            self._bytes = budget - cost
            self._bytes_throttled = False
            return True
        return False

    def _over_budget(self) -> Reply | Ignore:
        """Like the message rate: one ``rate-limited`` error per episode, the rest dropped."""
        if self._bytes_throttled:
            return Ignore()
        self._bytes_throttled = True
        return error_reply(
            ErrorCode.RATE_LIMITED,
            f"more than {self.limits.byte_rate:g} bytes/s to deliver (a broadcast costs its"
            " size times the members it reaches): dropping messages until you slow down",
        )

    def _join_request(self, join: Join) -> JoinRequest | Reply:
        """The join with its room and token resolved (its own, else the URL's)."""
        token = join.token or self.url_token
        if not join.peer_id and token is None:  # with a token, the ID may come from it
            self.phase = Phase.CLOSING
            return error_reply(
                ErrorCode.BAD_MESSAGE, "'join' message needs a 'peerId' string", CloseCode.BAD_JOIN
            )
        if join.room is None and self.url_room is not None:
            try:  # the URL's room obeys the rules of the join's own
                check_name(self.url_room, "room")
            except ProtocolError as exc:
                self.phase = Phase.CLOSING
                return error_reply(
                    exc.code, f"?room= in the URL: {exc.message}", CloseCode.BAD_JOIN
                )
        if token != join.token:
            join = replace(join, token=token)
        return JoinRequest(join, join.room or self.url_room or DEFAULT_ROOM)

    def _forward(
        self, kind: str, claimed: PeerId | None, to: PeerId | None, text: str
    ) -> Forward | Reply:
        """Relay ``text`` from this joined peer: add a missing ``from``, refuse a forged one."""
        sender = self.peer_id
        if sender is None:  # pragma: no cover - JOINED always sets it
            raise RuntimeError("session joined without a peer id")
        if claimed is None:
            data = stamp_sender(text, sender)
        elif claimed != sender:
            return error_reply(
                ErrorCode.FORGED_FROM, f"'from' is '{claimed}' but you joined as '{sender}'"
            )
        else:
            data = text
        return Forward(kind, to, data)

    def _is_bad_join(self, text: str) -> bool:
        """An invalid frame that was meant as a join ends the connection, as a failed join."""
        return self.phase is Phase.AWAITING_JOIN and _type_of(text) == "join"


def _utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8; a lone surrogate (only a test can make one: frames off
    the wire are valid UTF-8) counts its 3 bytes instead of raising."""
    return len(text.encode("utf-8", "surrogatepass"))


def _type_of(text: str) -> str:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return ""
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else ""
