"""Whether a description comes from the connection we hold: read from the SDP alone.

Each RTCPeerConnection has its own DTLS certificate, so a new fingerprint means the other
side started a new connection (the page's ``sameCertificate()`` does the same). The same
certificate with new ICE credentials is an ICE restart, which aiortc cannot follow: its
ICE transport keeps the first remote credentials it was started with. Anything else is a
renegotiation (a track added or removed) that aiortc applies to the connection in place.

Our own re-offers are rewritten (:func:`reoffer`) so that they change nothing aiortc does
not change on the wire.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from peer.mesh import Origin

_FINGERPRINT = re.compile(r"^a=fingerprint:(\S+ \S+)", re.MULTILINE)
_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)", re.MULTILINE)
_PWD = re.compile(r"^a=ice-pwd:(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Session:
    """What identifies one end of a connection in its SDP: its certificate's fingerprints
    ("algorithm value", lower case; aiortc lists three, browsers one) and the first ICE
    credentials (session level, or the first m-line's: the one BUNDLE carries)."""

    fingerprints: frozenset[str]
    ufrag: str | None
    pwd: str | None


def session_of(sdp: str) -> Session:
    def first(pattern: re.Pattern[str]) -> str | None:
        match = pattern.search(sdp)
        return match.group(1) if match else None

    fingerprints = frozenset(value.lower() for value in _FINGERPRINT.findall(sdp))
    return Session(fingerprints, first(_UFRAG), first(_PWD))


def origin(current: str | None, incoming: str) -> Origin:
    """Where ``incoming`` comes from, given the remote description we hold (None: none).

    The same certificate shares a fingerprint (a peer may list fewer algorithms in one
    description than in another)."""
    if current is None:
        return Origin.NEW_CONNECTION
    held, new = session_of(current), session_of(incoming)
    if not held.fingerprints & new.fingerprints:
        return Origin.NEW_CONNECTION
    if (held.ufrag, held.pwd) != (new.ufrag, new.pwd):
        return Origin.ICE_RESTART
    return Origin.SAME_CONNECTION


_MID = re.compile(r"^a=mid:(\S+)", re.MULTILINE)
_MSID = re.compile(r"^a=msid:\S+ (\S+)", re.MULTILINE)


def track_ids(sdp: str) -> dict[str, str]:
    """The sender's track ID (``a=msid``) of each m-line, by mid.

    aiortc only takes it when ``a=msid-semantic`` lists the stream, which Chromium no
    longer writes, so it names the tracks of a browser at random.
    """
    ids: dict[str, str] = {}
    for section in re.split(r"^m=", sdp, flags=re.MULTILINE)[1:]:
        mid, msid = _MID.search(section), _MSID.search(section)
        if mid and msid:
            ids[mid.group(1)] = msid.group(1)
    return ids


_SETUP = re.compile(r"^a=setup:(\S+)", re.MULTILINE)


def reoffer(offer: str, local: str | None, remote: str | None) -> str:
    """Our re-offer of a negotiated connection as aiortc really runs it: the m-lines it
    had as before (:func:`keep_media_sections`), and the DTLS roles it has
    (:func:`keep_dtls_role`). ``local``, ``remote``: the last negotiation's descriptions."""
    return keep_dtls_role(keep_media_sections(offer, local), local, remote)


def keep_dtls_role(offer: str, local: str | None, remote: str | None) -> str:
    """``offer`` (a re-offer of ours) naming the DTLS role the connection already has.

    aiortc writes ``a=setup:actpass`` in every offer, and a browser may answer a re-offer
    with the other role than it has, which means a new DTLS association: aiortc cannot
    start one on a connected transport. Whichever of ``local`` and ``remote`` answered last
    names the roles.
    """
    ours = _SETUP.search(local or "")
    theirs = _SETUP.search(remote or "")
    role = None
    if ours and ours.group(1) in ("active", "passive"):
        role = ours.group(1)
    elif theirs and theirs.group(1) in ("active", "passive"):
        role = "passive" if theirs.group(1) == "active" else "active"
    if role is None:
        return offer
    return re.sub(r"^a=setup:actpass", f"a=setup:{role}", offer, flags=re.MULTILINE)


#: The lines of an m-section that say how its RTP is numbered.
_CODEC_LINE = re.compile(r"^a=(?:rtpmap|fmtp|rtcp-fb|extmap):")


def _sections(sdp: str) -> tuple[str, list[str]]:
    parts = re.split(r"(?=^m=)", sdp, flags=re.MULTILINE)
    return parts[0], parts[1:]


def keep_media_sections(offer: str, previous: str | None) -> str:
    """``offer`` (a re-offer of ours) with the payload types and header extension IDs that
    ``previous`` (our last description) negotiated, m-line by m-line.

    aiortc writes a re-offer from its codec table: new payload types and header extension
    IDs, though its running senders and receivers keep the negotiated ones (they are
    configured once). A browser would answer with the new ones and send with them, which
    aiortc's receivers would not recognise. A new m-line gets the header extension IDs the
    others have: one BUNDLE transport has one ID per extension, or the browser cannot
    route the new m-line's packets.
    """
    if not previous:
        return offer
    old: dict[str, str] = {}
    for section in _sections(previous)[1]:
        mid = _MID.search(section)
        if mid:
            old[mid.group(1)] = section
    ids = {uri: int(n) for section in old.values() for n, uri in _EXTMAP.findall(section)}
    head, sections = _sections(offer)
    kept = []
    for section in sections:
        mid = _MID.search(section)
        before = old.get(mid.group(1)) if mid else None
        if before is not None:
            section = _numbered_as(section, before)
        else:
            section = _same_extension_ids(section, ids)
        kept.append(section)
    return head + "".join(kept)


def _numbered_as(section: str, before: str) -> str:
    """``section`` with the m= line and the codec and extension lines of ``before``."""
    lines, old = section.splitlines(keepends=True), before.splitlines(keepends=True)
    numbering = [line for line in old[1:] if _CODEC_LINE.match(line)]
    rest = [line for line in lines[1:] if not _CODEC_LINE.match(line)]
    return old[0] + "".join(numbering) + "".join(rest)


_EXTMAP = re.compile(r"^a=extmap:(\d+) (\S+)", re.MULTILINE)


def _same_extension_ids(section: str, ids: dict[str, int]) -> str:
    """``section`` with each header extension numbered as in ``ids`` (by URI); one that is
    not there takes an ID nothing else uses."""
    taken = set(ids.values())
    chosen: dict[str, int] = {}
    for number, uri in _EXTMAP.findall(section):
        if uri in ids:
            chosen[uri] = ids[uri]
        else:
            free = int(number) if int(number) not in taken else min(set(range(1, 15)) - taken)
            taken.add(free)
            chosen[uri] = free
    return _EXTMAP.sub(lambda m: f"a=extmap:{chosen[m.group(2)]} {m.group(2)}", section)
