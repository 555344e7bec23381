"""Who may open a WebSocket at all: browser origins, and per-client-IP caps.

Decided before the upgrade, so a refused client costs an HTTP response and nothing more
(403 for an origin, 429 for a cap). Pure: the adapter passes headers, addresses and time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from signaling.reasons import Refusal

#: ``--allow-origin '*'``: any browser origin may connect.
ANY_ORIGIN = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}
#: What a host name in an origin may hold (browsers send IDNs as punycode): no ``*``.
_HOST_NAME = re.compile(r"[a-z0-9._-]+")


class OriginError(ValueError):
    """An ``--allow-origin`` or ``--public-url`` value that is not an origin or a URL."""


@dataclass(frozen=True, slots=True)
class Origin:
    """A web origin as browsers compare them: scheme, host and port, the default port
    filled in (``http://h`` and ``http://h:80`` are one origin), IPv6 hosts normalized."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, page: bool = False) -> Origin:
        """``https://Example.com`` -> ``Origin("https", "example.com", 443)``, else OriginError.

        ``page``: a page's URL (``--public-url``), whose path is not part of its origin.
        """
        expected = "https://host[:port]/..." if page else "https://host[:port]"
        complaint = f"not {'an http(s) URL' if page else 'an origin'}: {text!r} ({expected})"
        try:
            parts = urlsplit(text.strip())
            port = parts.port
        except ValueError:  # a bad port, an unclosed [
            raise OriginError(complaint) from None
        host = parts.hostname
        if parts.scheme not in DEFAULT_PORTS or not host or "@" in parts.netloc:
            raise OriginError(complaint)
        if not page and (parts.path not in ("", "/") or parts.query or parts.fragment):
            raise OriginError(complaint)
        try:
            host = str(ipaddress.ip_address(host))  # [0:0::1] is [::1]
        except ValueError:
            if not _HOST_NAME.fullmatch(host):
                raise OriginError(complaint) from None
        return cls(parts.scheme, host, DEFAULT_PORTS[parts.scheme] if port is None else port)

    @classmethod
    def of_request(cls, scheme: str, host: str | None) -> Origin | None:
        """The origin of a page fetched from this request's ``Host`` with its scheme."""
        if host is None:
            return None
        try:
            return cls.parse(f"{scheme}://{host}")
        except OriginError:
            return None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}"


def normalize_origin(text: str) -> str:
    """``https://Example.com:443/`` -> ``https://example.com``: how browsers send it; ``*``
    stays (any origin)."""
    return ANY_ORIGIN if text.strip() == ANY_ORIGIN else str(Origin.parse(text))


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Browsers' ``Origin`` allowed to connect: the server's own, and those listed.

    A page of another site must not open a WebSocket to a server its visitor can reach (on
    their machine, on their network) and join rooms as them: cross-site WebSocket hijacking.
    """

    allowed: frozenset[Origin] = frozenset()
    #: ``--allow-origin '*'``: any origin.
    any_origin: bool = False
    #: The origin of ``--public-url``: the server's own as users of its proxy see it.
    public: Origin | None = None

    @classmethod
    def of(cls, origins: Iterable[str], public_url: str | None = None) -> OriginPolicy:
        listed = [o.strip() for o in origins]
        return cls(
            frozenset(Origin.parse(o) for o in listed if o != ANY_ORIGIN),
            ANY_ORIGIN in listed,
            Origin.parse(public_url, page=True) if public_url is not None else None,
        )

    def admits(self, origin: str | None, scheme: str, host: str | None) -> bool:
        """``origin`` is the request's ``Origin`` header, ``scheme`` and ``host`` (its
        ``Host`` header) how it reached this server.

        No ``Origin``: not a browser (a bot, the CLI), not this rule's business. The page
        this server serves itself is same-origin (scheme, host and port of the request).
        """
        if origin is None or self.any_origin:
            return True
        try:
            theirs = Origin.parse(origin)
        except OriginError:
            return False  # "null": a sandboxed frame, a file: page
        if theirs in self.allowed or theirs == self.public:
            return True
        return theirs == Origin.of_request(scheme, host)


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """Who a connection is counted as, and why a forwarded value was not used."""

    address: str
    #: A trusted ``X-Forwarded-For`` entry that is not an address (the server logs it).
    unusable: str | None = None


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trust_proxy: bool
) -> ClientAddress:
    """The address limits count against: the proxy's last ``X-Forwarded-For`` hop if trusted.

    ``forwarded_for`` holds the header's lines, read as one list joined with ``,``. Only its
    last entry is the proxy's own observation: earlier ones, the first line included, are
    whatever the client wrote, and trusting them would let anyone pick the address they are
    counted as. An entry that is not an address leaves the socket's.
    """
    socket_address = peer or "unknown"
    if not trust_proxy or not forwarded_for:
        return ClientAddress(socket_address)
    last = ",".join(forwarded_for).rsplit(",", 1)[-1].strip()
    try:
        return ClientAddress(str(ipaddress.ip_address(last)))
    except ValueError:
        return ClientAddress(socket_address, last)


def counted_address(address: str) -> str:
    """What the per-address caps count: an IPv6 client by its /64 (the block one subscriber
    gets, where picking a fresh address per connection is free), an IPv4-mapped address as
    the IPv4 one, IPv4 per address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class _Address:
    connections: int
    tokens: float
    last: float


class IpGate:
    """Counts connections and connection attempts per client address (an IPv6 client's
    /64, :func:`counted_address`).

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
        address = counted_address(address)
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
        entry = self._addresses.get(counted_address(address))
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
