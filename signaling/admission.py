"""Who may open a WebSocket at all: browser origins, and per-client-IP caps.

Decided before the upgrade, so a refused client costs an HTTP response and nothing more
(403 for an origin, 429 for a cap). Pure: the adapter passes headers, addresses and time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from signaling.metrics import Refusal


class OriginError(ValueError):
    """An ``--allow-origin`` value that is not ``scheme://host[:port]``."""


def normalize_origin(text: str) -> str:
    """``https://Example.com:443/`` -> ``https://example.com:443``: how browsers send it."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise OriginError(f"not an origin: {text!r} (expected https://host[:port])")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise OriginError(f"not an origin: {text!r} (expected https://host[:port])")
    return f"{parts.scheme}://{parts.netloc.lower()}"


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Browsers' ``Origin`` allowed to connect; empty: any (the default, as before)."""

    allowed: frozenset[str] = frozenset()

    @classmethod
    def of(cls, origins: Iterable[str]) -> OriginPolicy:
        return cls(frozenset(normalize_origin(o) for o in origins))

    def admits(self, origin: str | None, host: str | None) -> bool:
        """``origin`` is the request's ``Origin`` header, ``host`` its ``Host`` header.

        No ``Origin``: not a browser (a bot, the CLI), not this rule's business. The page
        this server serves itself is same-origin (its ``Origin`` names the ``Host`` asked
        for), and always works.
        """
        if not self.allowed or origin is None:
            return True
        if host is not None and urlsplit(origin).netloc.lower() == host.lower():
            return True
        return origin.lower() in self.allowed


def client_address(peer: str | None, forwarded_for: str | None, trust_proxy: bool) -> str:
    """The address limits count against: the proxy's last ``X-Forwarded-For`` hop if trusted.

    Only the last entry is the proxy's own observation; earlier ones are whatever the client
    wrote, and trusting them would let anyone pick the address they are counted as.
    """
    if trust_proxy and forwarded_for:
        last = forwarded_for.rsplit(",", 1)[-1].strip()
        if last:
            return last
    return peer or "unknown"


@dataclass(slots=True)
class _Address:
    connections: int
    tokens: float
    last: float


class IpGate:
    """Counts connections and connection attempts per client address.

    Attempts are a token bucket per address: ``connects_per_minute`` tokens, refilled evenly
    over a minute, so a burst of that size is allowed and the sustained rate is the cap.
    Memory: one entry per address with an open connection or an attempt in the last minute;
    idle entries are pruned as new addresses arrive. 0 for either cap turns it off.
    """

    def __init__(self, max_connections: int, connects_per_minute: int) -> None:
        self.max_connections = max_connections
        self.connects_per_minute = connects_per_minute
        self._addresses: dict[str, _Address] = {}
        self._since_prune = 0

    def __len__(self) -> int:
        return len(self._addresses)

    def open(self, address: str, now: float) -> Refusal | None:
        """Count a new connection from ``address``: None when admitted, else why not.

        An admitted connection must be closed once (:meth:`close`).
        """
        entry = self._addresses.get(address)
        capacity = float(self.connects_per_minute)
        if entry is None:
            self._maybe_prune(now)
            entry = self._addresses[address] = _Address(0, capacity, now)
        if capacity:
            entry.tokens = min(capacity, entry.tokens + (now - entry.last) * capacity / 60.0)
            entry.last = now
            if entry.tokens < 1.0:
                return Refusal.IP_RATE
        if self.max_connections and entry.connections >= self.max_connections:
            return Refusal.IP_CONNECTIONS
        entry.tokens -= 1.0
        entry.connections += 1
        return None

    def close(self, address: str) -> None:
        entry = self._addresses.get(address)
        if entry is not None and entry.connections > 0:
            entry.connections -= 1

    def _maybe_prune(self, now: float) -> None:
        self._since_prune += 1
        if self._since_prune < max(64, len(self._addresses)):
            return  # amortised: at most one pass per as many new addresses as are tracked
        self._since_prune = 0
        capacity = float(self.connects_per_minute)
        for address, entry in list(self._addresses.items()):
            refilled = entry.tokens + (now - entry.last) * capacity / 60.0
            if entry.connections == 0 and (not capacity or refilled >= capacity):
                del self._addresses[address]
