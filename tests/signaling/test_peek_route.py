"""The relay's fast path (peek_route) never decides differently from the full parse."""

from __future__ import annotations

import json
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.protocol import (
    Answer,
    Candidate,
    ErrorCode,
    Offer,
    PeerId,
    ProtocolError,
    RoomId,
    parse,
    peek_route,
)
from signaling.session import Forward, Limits, Session

ABSENT = object()

SIGLOAD_FRAME = (
    '{"type":"candidate","from":"p0-3","to":"p0-7","candidate":{"candidate":"candidate:1 1 udp'
    ' 2122260223 127.0.0.1 50000 typ host xxxx","sdpMid":"0","sdpMLineIndex":0,"ts":17642}}'
)


def full_parse_route(text: str) -> tuple[str, PeerId | None, PeerId | None] | None:
    """What peek_route must answer, from the full parse."""
    try:
        message = parse(text)
    except ProtocolError:
        return None
    if isinstance(message, (Offer, Answer, Candidate)):
        return message.type, message.sender, message.to
    return None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SIGLOAD_FRAME, ("candidate", "p0-3", "p0-7")),
        ('{"type":"offer","to":"bob","sdp":"v=0\\r\\n"}', ("offer", None, "bob")),
        ('{"type":"answer","from":"","to":"","sdp":""}', ("answer", None, None)),
        ('{"type":"candidate","to":"bob","candidate":null}', ("candidate", None, "bob")),
        (
            '{"type":"candidate","to":"bob","candidate":"candidate:1 1 udp"}',
            ("candidate", None, "bob"),
        ),
        ('{"type": "candidate", "to": "b\\u00f6b", "candidate": {}}', ("candidate", None, "böb")),
        # Everything else is the full parse's business: errors, joins, custom types.
        ('{"type":"candidate","to":"bob","candidate":{"candidate":"c","sdpMLineIndex":"0"}}', None),
        ('{"type":"candidate","to":"bob","candidate":{"candidate":5}}', None),
        (
            '{"type":"candidate","to":"bob","candidate":{"candidate":"c","sdpMLineIndex":true}}',
            None,
        ),
        ('{"type":"candidate","to":"bob","candidate":[]}', None),
        ('{"type":"offer","to":"bob","sdp":{"type":"offer"}}', None),
        ('{"type":"offer","to":"bob"}', None),
        ('{"type":"offer","to":5,"sdp":""}', None),
        ('{"type":"offer","from":["x"],"sdp":""}', None),
        ('{"type":["offer"],"sdp":""}', None),
        ('{"type":{"a":1},"sdp":""}', None),
        ('{"type":"chat","to":"bob"}', None),
        ('{"type":"join","peerId":"x"}', None),
        ('{"type":"peer-left","peerId":"x"}', None),
        ('["offer"]', None),
        ('{"type":"offer","sdp":""', None),
        ("[" * 70000, None),
    ],
)
def test_peek_route_cases(text: str, expected: tuple[str, str | None, str | None] | None) -> None:
    assert peek_route(text) == expected
    assert full_parse_route(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # Valid for the stdlib json, refused by orjson where installed: both must relay them.
        '{"type":"offer","to":"bob","sdp":"","x":NaN}',
        '{"type":"offer","to":"bob","sdp":"\\ud800"}',
        '{"type":"candidate","to":"bob","candidate":{"candidate":"c","sdpMLineIndex":1%s}}'
        % ("0" * 30),
    ],
)
def test_frames_only_the_stdlib_accepts_still_relay(text: str) -> None:
    expected = full_parse_route(text)
    assert expected is not None and expected[2] == "bob"
    assert peek_route(text) in (None, expected)
    session = Session(Limits(), 0.0)
    session.joined(PeerId("alice"), RoomId("default"))
    decision = session.receive(text, 0.0)
    assert isinstance(decision, Forward) and decision.to == "bob"


def test_deeply_nested_json_is_invalid_json_not_a_crash() -> None:
    with pytest.raises(ProtocolError) as info:
        parse('{"type":"chat","x":' + "[" * 70000)
    assert info.value.code == ErrorCode.INVALID_JSON


names = st.sampled_from(["alice", "bob", "", "mallory", "b\u00f6b", "\ud800"])
values = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), names, st.just([]), st.just({}))
candidates = st.one_of(
    values,
    st.fixed_dictionaries(
        {},
        optional={
            "candidate": st.one_of(values, st.just("candidate:1 1 udp 1 10.0.0.1 9 typ host")),
            "sdpMid": values,
            "sdpMLineIndex": values,
            "usernameFragment": values,
            "ts": values,
        },
    ),
)
frames = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(
            st.sampled_from(["offer", "answer", "candidate", "chat", "join", "error", ""]), values
        ),
        "from": values,
        "to": values,
        "sdp": values,
        "candidate": candidates,
        "peerId": values,
    },
)


def render(frame: dict[str, Any], compact: bool, cut: int | None) -> str:
    text = json.dumps(frame, separators=(",", ":") if compact else None, ensure_ascii=compact)
    return text[:cut] if cut is not None else text


@settings(max_examples=400, deadline=None)
@given(frames, st.booleans(), st.one_of(st.none(), st.integers(0, 60)))
def test_peek_route_agrees_with_parse(
    frame: dict[str, Any], compact: bool, cut: int | None
) -> None:
    text = render(frame, compact, cut)
    expected = full_parse_route(text)
    route = peek_route(text)
    assert route in (None, expected)
    if "ud800" not in text and "\ud800" not in text:  # orjson refuses lone surrogates
        # Same verdict, and the fast path is really taken whenever the parse relays.
        assert route == expected


@settings(max_examples=300, deadline=None)
@given(frames, st.booleans(), st.one_of(st.none(), st.integers(0, 60)))
def test_session_decides_the_same_with_and_without_the_fast_path(
    frame: dict[str, Any], compact: bool, cut: int | None
) -> None:
    text = render(frame, compact, cut)
    limits = Limits()

    def joined() -> Session:
        session = Session(limits, 0.0)
        session.joined(PeerId("alice"), RoomId("default"))
        return session

    fast = joined().receive(text, 0.0)
    with patch("signaling.session.peek_route", return_value=None):
        slow = joined().receive(text, 0.0)
    assert fast == slow
