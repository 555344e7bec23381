"""Remote candidates exactly as Chrome and Firefox trickle them."""

from __future__ import annotations

import pytest
from aiortc import RTCIceCandidate

from peer.candidates import CandidateBudget, CandidateError, Refusal, parse_remote_candidate
from signaling.protocol import IceCandidate, parse_candidate

# (candidate string, ip, port, protocol, type, related address, related port, tcptype)
CHROME = [
    (
        "candidate:1467250027 1 udp 2122260223 192.168.1.5 46243 typ host generation 0 "
        "ufrag sX2h network-id 1 network-cost 10",
        "192.168.1.5",
        46243,
        "udp",
        "host",
        None,
        None,
        None,
    ),
    (
        "candidate:3049524373 1 udp 2122262783 2001:db8::1a2b 51234 typ host generation 0 "
        "ufrag sX2h network-id 2",
        "2001:db8::1a2b",
        51234,
        "udp",
        "host",
        None,
        None,
        None,
    ),
    (
        "candidate:2135799584 1 udp 2113937151 6f1d3a2c-8b7e-4c1e-9f55-2d0b5c3e4a71.local "
        "54400 typ host generation 0 ufrag 9Gd6 network-cost 999",
        "6f1d3a2c-8b7e-4c1e-9f55-2d0b5c3e4a71.local",
        54400,
        "udp",
        "host",
        None,
        None,
        None,
    ),
    (
        "candidate:842163049 1 udp 1677729535 203.0.113.7 49806 typ srflx raddr 192.168.1.5 "
        "rport 49806 generation 0 ufrag sX2h network-id 1 network-cost 10",
        "203.0.113.7",
        49806,
        "udp",
        "srflx",
        "192.168.1.5",
        49806,
        None,
    ),
    (
        "candidate:1853887674 1 tcp 1518280447 192.168.1.5 9 typ host tcptype active "
        "generation 0 ufrag sX2h network-id 1 network-cost 10",
        "192.168.1.5",
        9,
        "tcp",
        "host",
        None,
        None,
        "active",
    ),
    (
        "candidate:3019275466 1 tcp 1518214911 192.168.1.5 50114 typ host tcptype passive "
        "generation 0 ufrag sX2h network-id 1",
        "192.168.1.5",
        50114,
        "tcp",
        "host",
        None,
        None,
        "passive",
    ),
    (
        "candidate:4023597742 1 udp 41885439 198.51.100.9 3478 typ relay raddr 203.0.113.7 "
        "rport 49806 generation 0 ufrag sX2h network-id 1",
        "198.51.100.9",
        3478,
        "udp",
        "relay",
        "203.0.113.7",
        49806,
        None,
    ),
]
FIREFOX = [
    (
        "candidate:0 1 UDP 2122252543 192.168.1.5 52113 typ host",
        "192.168.1.5",
        52113,
        "UDP",
        "host",
        None,
        None,
        None,
    ),
    (
        "candidate:1 1 UDP 2122187007 a2e1f8c3-4d5e-4f6a-8b7c-9d0e1f2a3b4c.local 57364 typ host",
        "a2e1f8c3-4d5e-4f6a-8b7c-9d0e1f2a3b4c.local",
        57364,
        "UDP",
        "host",
        None,
        None,
        None,
    ),
    (
        "candidate:2 1 TCP 2105524479 192.168.1.5 9 typ host tcptype active",
        "192.168.1.5",
        9,
        "TCP",
        "host",
        None,
        None,
        "active",
    ),
    (
        "candidate:3 1 UDP 1686052863 203.0.113.7 52113 typ srflx raddr 192.168.1.5 rport 52113",
        "203.0.113.7",
        52113,
        "UDP",
        "srflx",
        "192.168.1.5",
        52113,
        None,
    ),
    (
        "candidate:4 1 UDP 2122187263 fe80::8c4:3aff:fe11:2233 48000 typ host",
        "fe80::8c4:3aff:fe11:2233",
        48000,
        "UDP",
        "host",
        None,
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("text", "ip", "port", "protocol", "kind", "raddr", "rport", "tcptype"), CHROME + FIREFOX
)
def test_browser_candidates(
    text: str,
    ip: str,
    port: int,
    protocol: str,
    kind: str,
    raddr: str | None,
    rport: int | None,
    tcptype: str | None,
) -> None:
    payload = {"candidate": text, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "sX2h"}
    ice = parse_candidate(payload)  # the wire parser the agent uses
    assert ice is not None
    candidate = parse_remote_candidate(ice)
    assert (candidate.ip, candidate.port, candidate.protocol, candidate.type) == (
        ip,
        port,
        protocol,
        kind,
    )
    assert (candidate.relatedAddress, candidate.relatedPort, candidate.tcpType) == (
        raddr,
        rport,
        tcptype,
    )
    assert candidate.component == 1
    assert (candidate.sdpMid, candidate.sdpMLineIndex) == ("0", 0)


@pytest.mark.parametrize(
    "payload", [None, "", {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]
)
def test_end_of_candidates(payload: object) -> None:
    assert parse_candidate(payload) is None


def test_mline_index_only_and_a_line_prefix() -> None:
    ice = IceCandidate("a=candidate:0 1 UDP 2122252543 10.0.0.2 5000 typ host", None, 1)
    candidate = parse_remote_candidate(ice)
    assert (candidate.ip, candidate.sdpMid, candidate.sdpMLineIndex) == ("10.0.0.2", None, 1)


@pytest.mark.parametrize(
    "text",
    [
        "candidate:0 1 UDP 2122252543 10.0.0.2",  # too short (aiortc would assert)
        "candidate:0 1 UDP 2122252543 10.0.0.2 5000 kind host",  # no 'typ'
        "candidate:0 x UDP 2122252543 10.0.0.2 5000 typ host",
        "candidate:0 1 UDP 2122252543 10.0.0.2 port typ host",
        "candidate:0 1 SCTP 2122252543 10.0.0.2 5000 typ host",
        "candidate:0 1 UDP 2122252543 10.0.0.2 5000 typ weird",
    ],
)
def test_malformed_candidates_are_errors(text: str) -> None:
    with pytest.raises(CandidateError):
        parse_remote_candidate(IceCandidate(text, "0", 0))


def test_candidate_needs_mid_or_index() -> None:
    with pytest.raises(CandidateError, match="sdpMid"):
        parse_remote_candidate(IceCandidate("candidate:0 1 UDP 1 10.0.0.2 5000 typ host"))


def _candidate(ip: str, port: int) -> RTCIceCandidate:
    return parse_remote_candidate(
        IceCandidate(f"candidate:0 1 udp 2122252543 {ip} {port} typ host", "0", 0)
    )


# (candidates as (ip, port), names resolving, limit, mdns limit, refusals in order)
BUDGETS = [
    ([("10.0.0.1", p) for p in range(3)], 0, 3, 4, [None, None, None]),
    ([("10.0.0.1", p) for p in range(4)], 0, 3, 4, [None, None, None, Refusal.TOO_MANY]),
    # the same address again costs nothing: aioice ignores it
    ([("10.0.0.1", 1), ("10.0.0.1", 1), ("10.0.0.1", 2)], 0, 2, 4, [None, None, None]),
    ([("a.local", 1)], 3, 8, 4, [None]),
    ([("a.local", 1)], 4, 8, 4, [Refusal.MDNS_BUSY]),
    # refused for mDNS: it takes no place, and a plain one still fits
    ([("a.local", 1), ("10.0.0.1", 1)], 4, 1, 4, [Refusal.MDNS_BUSY, None]),
    ([("A.LOCAL", 1)], 4, 8, 4, [Refusal.MDNS_BUSY]),
]


@pytest.mark.parametrize(("addresses", "resolving", "limit", "mdns", "expected"), BUDGETS)
def test_budget_admits(
    addresses: list[tuple[str, int]],
    resolving: int,
    limit: int,
    mdns: int,
    expected: list[Refusal | None],
) -> None:
    budget = CandidateBudget(limit, mdns)
    got = [budget.admit(_candidate(ip, port), resolving) for ip, port in addresses]
    assert got == expected
    assert budget.dropped == sum(r is not None for r in expected)


def test_budget_trims_a_description() -> None:
    lines = [f"a=candidate:{i} 1 udp 2122252543 10.0.0.1 {5000 + i} typ host" for i in range(3)]
    names = [f"a=candidate:9{i} 1 udp 2122252543 n{i}.local 6000 typ host" for i in range(3)]
    sdp = "\r\n".join(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", *names, *lines, "a=mid:0", ""])
    budget = CandidateBudget(limit=3, mdns_limit=2)
    trimmed, refusals = budget.trim(sdp, resolving=1)
    # one name was resolving already: one more; then two plain ones fill the budget
    assert trimmed.split("\r\n") == [
        "v=0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        names[0],
        *lines[:2],
        "a=mid:0",
        "",
    ]
    assert refusals == [Refusal.MDNS_BUSY, Refusal.MDNS_BUSY, Refusal.TOO_MANY]
    assert budget.dropped == 3
    # the same description again (a renegotiation) takes what it has and refuses the rest
    assert budget.trim(trimmed, resolving=0) == (trimmed, [])
    untouched = "v=0\r\na=candidate:bad\r\n"
    assert budget.trim(untouched, resolving=0) == (untouched, [])
