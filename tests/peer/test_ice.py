from __future__ import annotations

import pytest

from peer.ice import IceServer, IceServerError, parse_ice_server, rtc_configuration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stun:stun.example.org:3478", IceServer("stun:stun.example.org:3478")),
        ("stun:10.0.0.1", IceServer("stun:10.0.0.1")),
        (
            "turn:user:secret@turn.example.org:3478",
            IceServer("turn:turn.example.org:3478", "user", "secret"),
        ),
        (
            "turn:u:p@10.0.0.1:3478?transport=tcp",
            IceServer("turn:10.0.0.1:3478?transport=tcp", "u", "p"),
        ),
        ("turns:u:p@turn.example.org:5349", IceServer("turns:turn.example.org:5349", "u", "p")),
        ("stun:[2001:db8::1]:3478", IceServer("stun:[2001:db8::1]:3478")),
    ],
)
def test_parse(text: str, expected: IceServer) -> None:
    assert parse_ice_server(text) == expected


@pytest.mark.parametrize(
    "text", ["http://x", "turn:turn.example.org:3478", "stun:u:p@host:1", "stun:host:99999", ""]
)
def test_bad_urls(text: str) -> None:
    with pytest.raises(IceServerError):
        parse_ice_server(text)


def test_default_configuration_has_no_server() -> None:
    """aiortc's own default is a public STUN server: ours must be an explicit empty list."""
    config = rtc_configuration([])
    assert config.iceServers == []
    config = rtc_configuration([parse_ice_server("turn:u:p@h:3478")])
    assert config.iceServers is not None
    (server,) = config.iceServers
    assert (server.urls, server.username, server.credential) == ("turn:h:3478", "u", "p")
