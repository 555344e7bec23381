"""PeerLink with real aiortc connections: trickled candidates, early ones, mDNS and TCP."""

from __future__ import annotations

import time

import pytest

from peer.candidates import MAX_REMOTE_CANDIDATES
from peer.ice import rtc_configuration
from peer.link import PeerLink
from peer.media.tap import Sinks
from peer.mesh import LinkState, Role
from signaling.protocol import IceCandidate, PeerId, parse_candidate
from tests.peer.helpers import small_media
from tests.support import eventually, seconds

pytestmark = pytest.mark.slow


def make_link(remote: str, role: Role, tracks: list[object]) -> PeerLink:
    return PeerLink(
        PeerId(remote),
        role,
        rtc_configuration([]),
        tracks,  # type: ignore[arg-type]
        Sinks(),
        on_state=lambda link: None,
        on_track=lambda link, track: None,
    )


def split_candidates(sdp: str) -> tuple[str, list[IceCandidate]]:
    """The SDP without its candidates, and those candidates as a browser would trickle them."""
    lines, candidates, mid, index = [], [], None, -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
        if line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        if line.startswith("a=candidate:"):
            candidates.append(IceCandidate(line[2:], mid, index, None))
            continue
        if line == "a=end-of-candidates":
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n", candidates


async def test_candidates_before_the_offer_are_kept_and_applied() -> None:
    """A browser's candidates can arrive before its offer is applied; aiortc would drop them."""
    media = small_media("a")
    offerer = make_link("b", Role.OFFERER, [media.video])
    answerer = make_link("a", Role.ANSWERER, [])
    try:
        offer, trickled = split_candidates(await offerer.make_offer())
        assert trickled, "aiortc puts its candidates in the SDP"
        for candidate in trickled:
            answerer.queue_candidate(candidate)  # no remote description yet: queued
        answerer.queue_candidate(None)
        assert not answerer.has_remote_description
        answer = await answerer.accept_offer(offer)
        # the offerer never learns the answerer's candidates: only the answerer's checks,
        # sent to the queued candidates, can connect them
        answer_without_candidates, _ = split_candidates(answer)
        await offerer.accept_answer(answer_without_candidates)
        await eventually(
            lambda: offerer.state is LinkState.CONNECTED and answerer.state is LinkState.CONNECTED,
            seconds(10),
            "a connection made only from the queued candidates",
        )
    finally:
        await offerer.close()
        await answerer.close()
        media.stop()


async def test_mdns_and_tcp_candidates_do_not_block_or_break() -> None:
    media = small_media("a")
    offerer = make_link("b", Role.OFFERER, [media.video])
    answerer = make_link("a", Role.ANSWERER, [])
    try:
        answer = await answerer.accept_offer(await offerer.make_offer())
        await offerer.accept_answer(answer)
        browser = [
            "candidate:2135799584 1 udp 2113937151 6f1d3a2c-8b7e-4c1e-9f55-2d0b5c3e4a71.local "
            "54400 typ host generation 0 ufrag 9Gd6 network-cost 999",
            "candidate:1853887674 1 tcp 1518280447 192.0.2.77 9 typ host tcptype active "
            "generation 0 ufrag sX2h network-id 1 network-cost 10",
            "candidate:2 1 TCP 2105524479 192.0.2.78 9 typ host tcptype passive",
            "candidate:1 1 UDP 2122187007 a2e1f8c3-4d5e-4f6a-8b7c-9d0e1f2a3b4c.local 57364 "
            "typ host",
            "not a candidate at all",
        ]
        started = time.monotonic()
        for text in browser:
            ice = parse_candidate({"candidate": text, "sdpMid": "0", "sdpMLineIndex": 0})
            await offerer.add_candidate(ice)
        # mDNS names resolve in the background (aioice waits up to 1 s per name)
        assert time.monotonic() - started < seconds(0.5)
        await eventually(
            lambda: offerer.state is LinkState.CONNECTED and answerer.state is LinkState.CONNECTED,
            seconds(10),
            "the connection despite unusable candidates",
        )
    finally:
        await offerer.close()
        await answerer.close()
        media.stop()


def with_candidates(sdp: str, lines: list[str]) -> str:
    """``sdp`` with ``lines`` (``candidate:...``) added to its first media section."""
    head, first, *rest = sdp.split("\r\nm=")
    extra = "".join(f"\r\na={line}" for line in lines)
    return "\r\nm=".join([head, first + extra, *rest])


async def test_candidates_in_a_description_count_against_the_bound() -> None:
    """A description can carry a flood too: what is over the bound is left out of it."""
    media = small_media("a")
    offerer = make_link("b", Role.OFFERER, [media.video])
    answerer = make_link("a", Role.ANSWERER, [])
    try:
        offer = await offerer.make_offer()
        own = offer.count("a=candidate:")
        flood = [
            f"candidate:{i} 1 udp 2122260223 127.0.0.1 {20_000 + i} typ host" for i in range(300)
        ]
        answer = await answerer.accept_offer(with_candidates(offer, flood))
        await offerer.accept_answer(answer)
        transport = answerer.pc.getTransceivers()[0].receiver.transport.transport
        held = [c for c in transport.getRemoteCandidates() if c.type != "prflx"]
        assert len(held) == MAX_REMOTE_CANDIDATES
        assert answerer.candidates_dropped == own + 300 - MAX_REMOTE_CANDIDATES
        # the offer's own candidates come first and are kept: the connection is made
        await eventually(
            lambda: offerer.state is LinkState.CONNECTED and answerer.state is LinkState.CONNECTED,
            seconds(10),
            "the connection despite the flood",
        )
    finally:
        await offerer.close()
        await answerer.close()
        media.stop()
