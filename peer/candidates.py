"""Remote ICE candidates as browsers trickle them, turned into aiortc's RTCIceCandidate,
and the bound on how many one link takes.

Browsers send ``RTCIceCandidate.toJSON()``: ``{"candidate": "candidate:...", "sdpMid",
"sdpMLineIndex", "usernameFragment"}``. aiortc's parser wants the text after
``candidate:`` and asserts on short input, so the text is checked here first and a bad
candidate becomes a :class:`CandidateError` instead of an AssertionError.

aioice keeps every remote candidate (and its pairs) for the life of the connection, and
resolves each ``.local`` name by multicast: :class:`CandidateBudget` decides which ones a
link takes, trickled or in a description, so a remote peer cannot grow either without end.
"""

from __future__ import annotations

from enum import StrEnum

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from peer.errors import MeshpeerError
from signaling.protocol import IceCandidate

#: Different remote candidates one link takes, trickled or in descriptions: a browser sends
#: a few per network interface; only a broken or hostile peer sends more.
MAX_REMOTE_CANDIDATES = 128
#: ``.local`` (mDNS) candidates of one link being resolved at once: aioice multicasts a
#: query for each and waits up to 1 s for the answer.
MAX_MDNS_RESOLVING = 4

_PROTOCOLS = frozenset({"udp", "tcp"})
_TYPES = frozenset({"host", "srflx", "prflx", "relay"})


class CandidateError(MeshpeerError):
    """A remote candidate that cannot be parsed."""


def parse_remote_candidate(ice: IceCandidate) -> RTCIceCandidate:
    """The aiortc candidate for one trickled browser candidate (mDNS and TCP included)."""
    text = ice.candidate.strip()
    for prefix in ("a=", "candidate:"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    bits = text.split()
    if len(bits) < 8 or bits[6] != "typ":
        raise CandidateError(f"malformed candidate {ice.candidate[:80]!r}")
    component, protocol, priority, port, kind = bits[1], bits[2], bits[3], bits[5], bits[7]
    if not (component.isdigit() and priority.isdigit() and port.isdigit()):
        raise CandidateError(f"non-numeric field in candidate {ice.candidate[:80]!r}")
    if protocol.lower() not in _PROTOCOLS or kind not in _TYPES:
        raise CandidateError(f"unknown protocol or type in candidate {ice.candidate[:80]!r}")
    if ice.sdp_mid is None and ice.sdp_mline_index is None:
        raise CandidateError("candidate has neither sdpMid nor sdpMLineIndex")
    try:
        candidate = candidate_from_sdp(text)
    except (ValueError, IndexError, AssertionError) as exc:
        raise CandidateError(f"bad candidate {ice.candidate[:80]!r}: {exc}") from None
    candidate.sdpMid = ice.sdp_mid
    candidate.sdpMLineIndex = ice.sdp_mline_index
    return candidate


class Refusal(StrEnum):
    """Why a remote candidate was not taken."""

    TOO_MANY = "too-many"
    MDNS_BUSY = "mdns-busy"


def is_mdns(candidate: RTCIceCandidate) -> bool:
    return bool(candidate.ip.lower().endswith(".local"))


class CandidateBudget:
    """Which remote candidates one link takes: the first ``limit`` different ones (the same
    address again is free: aioice ignores it), and a ``.local`` one only while fewer than
    ``mdns_limit`` names resolve. Refusals are counted in ``dropped``. No I/O.
    """

    def __init__(
        self, limit: int = MAX_REMOTE_CANDIDATES, mdns_limit: int = MAX_MDNS_RESOLVING
    ) -> None:
        self.limit = limit
        self.mdns_limit = mdns_limit
        self.dropped = 0
        self._taken: set[tuple[int, str, str, int]] = set()

    def admit(self, candidate: RTCIceCandidate, resolving: int) -> Refusal | None:
        """None if ``candidate`` may go to aiortc, with ``resolving`` names being resolved."""
        key = (candidate.component, candidate.protocol.lower(), candidate.ip, candidate.port)
        if is_mdns(candidate) and resolving >= self.mdns_limit:
            return self.refuse(Refusal.MDNS_BUSY)
        if key not in self._taken:
            if len(self._taken) >= self.limit:
                return self.refuse(Refusal.TOO_MANY)
            self._taken.add(key)
        return None

    def explain(self, refusal: Refusal) -> str:
        if refusal is Refusal.TOO_MANY:
            return f"more than {self.limit} candidates for one connection"
        return f"an mDNS candidate while {self.mdns_limit} names are being resolved"

    def refuse(self, refusal: Refusal) -> Refusal:
        """Count a candidate dropped for ``refusal`` (here or by the link)."""
        self.dropped += 1
        return refusal

    def trim(self, sdp: str, resolving: int) -> tuple[str, list[Refusal]]:
        """``sdp`` without the candidate lines this link does not take, and why each went.

        aiortc resolves a description's ``.local`` names all at once, so they count
        against ``mdns_limit`` together with the ``resolving`` ones. A line aiortc cannot
        parse is left for aiortc to refuse, as before.
        """
        lines = sdp.split("\n")
        kept: list[str] = []
        refusals: list[Refusal] = []
        for line in lines:
            text = line.rstrip("\r")
            if text.startswith("a=candidate:"):
                try:
                    candidate = candidate_from_sdp(text[len("a=candidate:") :])
                except (ValueError, IndexError, AssertionError):
                    candidate = None
                if candidate is not None:
                    refusal = self.admit(candidate, resolving)
                    if refusal is not None:
                        refusals.append(refusal)
                        continue
                    resolving += is_mdns(candidate)
            kept.append(line)
        return ("\n".join(kept) if refusals else sdp), refusals
