"""Where an offer comes from, read from its SDP alone: no sockets, no aiortc."""

from __future__ import annotations

import re

from peer.mesh import Origin
from peer.renegotiation import keep_dtls_role, origin, reoffer, session_of, track_ids

#: The lines that matter, as Chromium writes them (one m-line; the rest left out).
HELD = """v=0
o=- 4611 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
m=video 9 UDP/TLS/RTP/SAVPF 96
a=ice-ufrag:Ab1c
a=ice-pwd:pwdpwdpwdpwdpwdpwdpwdpwd
a=fingerprint:sha-256 AA:BB:CC:DD
a=setup:actpass
a=mid:0
m=audio 9 UDP/TLS/RTP/SAVPF 111
a=ice-ufrag:Ab1c
a=ice-pwd:pwdpwdpwdpwdpwdpwdpwdpwd
a=fingerprint:sha-256 AA:BB:CC:DD
a=mid:1
"""


def test_session_of_reads_the_fingerprints_and_first_credentials() -> None:
    session = session_of(HELD)
    assert session.fingerprints == {"sha-256 aa:bb:cc:dd"}  # case folded, as the page does
    assert (session.ufrag, session.pwd) == ("Ab1c", "pwdpwdpwdpwdpwdpwdpwdpwd")
    assert session_of("v=0\r\n") == session_of("")


def test_a_new_m_line_on_the_same_connection_is_a_renegotiation() -> None:
    # aiortc gives a new m-line its own credentials until BUNDLE applies: the first count
    added = HELD + "m=video 9 UDP/TLS/RTP/SAVPF 96\na=ice-ufrag:Xy9z\na=mid:2\n"
    assert origin(HELD, added) is Origin.SAME_CONNECTION
    assert origin(HELD, HELD.replace("a=setup:actpass", "a=setup:active")) is (
        Origin.SAME_CONNECTION
    )


def test_one_shared_fingerprint_is_the_same_certificate() -> None:
    """aiortc lists sha-256, sha-384 and sha-512; a browser keeps one of them."""
    three = HELD.replace(
        "a=fingerprint:sha-256 AA:BB:CC:DD",
        "a=fingerprint:sha-256 AA:BB:CC:DD\na=fingerprint:sha-512 EE:FF",
    )
    only_512 = HELD.replace("a=fingerprint:sha-256 AA:BB:CC:DD", "a=fingerprint:sha-512 EE:FF")
    assert origin(only_512, three) is Origin.SAME_CONNECTION
    assert origin(three, only_512) is Origin.SAME_CONNECTION


def test_crlf_and_case_do_not_matter() -> None:
    upper = HELD.replace("AA:BB", "aa:bb").replace("\n", "\r\n")
    assert origin(HELD, upper) is Origin.SAME_CONNECTION


def test_new_credentials_with_the_same_certificate_are_an_ice_restart() -> None:
    assert origin(HELD, HELD.replace("Ab1c", "Zz99")) is Origin.ICE_RESTART
    assert origin(HELD, HELD.replace("pwdpwdpwdpwd", "newnewnewnew")) is Origin.ICE_RESTART


def test_another_certificate_or_none_held_is_a_new_connection() -> None:
    assert origin(None, HELD) is Origin.NEW_CONNECTION
    assert origin(HELD, HELD.replace("AA:BB:CC:DD", "11:22:33:44")) is Origin.NEW_CONNECTION
    assert origin(HELD, HELD.replace("sha-256", "sha-384")) is Origin.NEW_CONNECTION
    no_fingerprint = "\n".join(x for x in HELD.splitlines() if "fingerprint" not in x)
    assert origin(no_fingerprint, no_fingerprint) is Origin.NEW_CONNECTION


def test_track_ids_by_mid() -> None:
    sdp = (
        HELD.replace("a=mid:0\n", "a=mid:0\na=msid:stream-1 camera-id\n")
        + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=msid:- canvas-id\r\n"
        + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\na=mid:3\n"
    )
    assert track_ids(sdp) == {"0": "camera-id", "2": "canvas-id"}
    assert track_ids("") == {}


#: Our last answer (the page offered): the page's payload types and extension IDs.
ANSWERED = """v=0
a=group:BUNDLE 0
m=video 5000 UDP/TLS/RTP/SAVPF 96 97
a=sendrecv
a=mid:0
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=rtpmap:96 VP8/90000
a=ice-ufrag:us
a=setup:active
"""

#: aiortc's re-offer of it, one video m-line added: its own table, actpass.
REOFFER = """v=0
a=group:BUNDLE 0 1
m=video 5000 UDP/TLS/RTP/SAVPF 97 98
a=sendonly
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=rtpmap:97 VP8/90000
a=ice-ufrag:us
a=setup:actpass
m=video 5000 UDP/TLS/RTP/SAVPF 97 98
a=sendrecv
a=mid:1
a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:4 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=rtpmap:97 VP8/90000
a=ice-ufrag:us
a=setup:actpass
"""


def test_a_reoffer_keeps_what_was_negotiated() -> None:
    sdp = reoffer(REOFFER, ANSWERED, HELD)
    head, first, added = re.split(r"(?=^m=)", sdp, flags=re.MULTILINE)
    assert "a=group:BUNDLE 0 1" in head
    # the negotiated m-line numbered as it was, the rest (its new direction) as offered
    assert first.startswith("m=video 5000 UDP/TLS/RTP/SAVPF 96 97\n")
    assert "a=rtpmap:96 VP8/90000" in first and "rtpmap:97" not in first
    assert "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid" in first
    assert "abs-send-time" not in first and "a=sendonly" in first
    # the new one: the same ID for the same extension, a free one for another; our role
    assert "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid" in added
    assert "a=extmap:1 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time" in added
    assert "a=setup:active" in added and "actpass" not in sdp


def test_the_dtls_role_comes_from_whoever_answered() -> None:
    offer = "m=audio\na=setup:actpass\nm=video\na=setup:actpass\n"
    assert keep_dtls_role(offer, "a=setup:passive", "a=setup:actpass").count("passive") == 2
    # we offered first (actpass), they answered active: we are passive
    assert "a=setup:passive" in keep_dtls_role(offer, "a=setup:actpass", "a=setup:active")
    assert "a=setup:active" in keep_dtls_role(offer, "a=setup:actpass", "a=setup:passive")
    assert keep_dtls_role(offer, None, None) == offer  # nothing negotiated yet
