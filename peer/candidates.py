"""Remote ICE candidates as browsers trickle them, turned into aiortc's RTCIceCandidate.

Browsers send ``RTCIceCandidate.toJSON()``: ``{"candidate": "candidate:...", "sdpMid",
"sdpMLineIndex", "usernameFragment"}``. aiortc's parser wants the text after
``candidate:`` and asserts on short input, so the text is checked here first and a bad
candidate becomes a :class:`CandidateError` instead of an AssertionError.
"""

from __future__ import annotations

from aiortc import RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

from peer.errors import MeshpeerError
from signaling.protocol import IceCandidate

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
