"""The wire format as pure functions: parse, serialize, stamp_sender. No event loop."""

from __future__ import annotations

import json
from typing import Any

import pytest

from signaling.protocol import (
    MAX_NAME_LENGTH,
    Answer,
    Candidate,
    CloseCode,
    Custom,
    Error,
    ErrorCode,
    IceCandidate,
    Join,
    Message,
    Offer,
    PeerId,
    PeerJoined,
    PeerLeft,
    PeerList,
    ProtocolError,
    RoomId,
    parse,
    serialize,
    stamp_sender,
)

P = PeerId
BROWSER_CANDIDATE = IceCandidate(
    "candidate:1 1 udp 2122260223 10.0.0.5 51234 typ host", "0", 0, "ab"
)

ROUND_TRIPS: list[Message] = [
    Join(P("alice")),
    Join(P("alice"), RoomId("lobby")),
    Join(P("alice"), RoomId("lobby"), "tok"),
    PeerList(()),
    PeerList((P("a"), P("b")), "tok", RoomId("lobby")),
    PeerJoined(P("bob")),
    PeerLeft(P("bob")),
    Error("id-taken", "peer id 'a' is already in room 'default'"),
    Offer("offer", P("a"), P("b"), sdp="v=0\r\n"),
    Answer("answer", P("b"), P("a"), sdp="v=0\r\n"),
    Candidate("candidate", P("a"), P("b"), candidate=BROWSER_CANDIDATE),
    Candidate("candidate", P("a"), None, candidate=None),
    Custom("chat", P("a"), None, data={"text": "hi"}),
]


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=lambda m: type(m).__name__)
def test_serialize_then_parse_is_identity(message: Message) -> None:
    assert parse(serialize(message)) == message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"join","peerId":"a"}', Join(P("a"))),
        ('{"type":"join","peerId":"a","room":null}', Join(P("a"))),
        # The reference server omits an empty peer list.
        ('{"type":"peer-list"}', PeerList(())),
        ('{"type":"peer-list","peers":null}', PeerList(())),
        ('{"type":"offer","sdp":"x","to":"b"}', Offer("offer", None, P("b"), sdp="x")),
        # Go clients omit empty fields, some JS clients send "".
        ('{"type":"offer","sdp":"x","to":"","from":""}', Offer("offer", None, None, sdp="x")),
        ('{"type":"candidate","to":"b"}', Candidate("candidate", None, P("b"))),
        ('{"type":"candidate","candidate":""}', Candidate("candidate")),
        ('{"type":"candidate","candidate":{"candidate":""}}', Candidate("candidate")),
        (
            '{"type":"candidate","candidate":"candidate:1 1 udp 1 h 1 typ host"}',
            Candidate("candidate", candidate=IceCandidate("candidate:1 1 udp 1 h 1 typ host")),
        ),
        ('{"type":"error"}', Error("", "")),
        ('{"type":"chat","text":"hi","to":"b"}', Custom("chat", None, P("b"))),
    ],
)
def test_parse_accepts(text: str, expected: Message) -> None:
    assert parse(text) == expected


def test_parse_keeps_the_raw_text_of_routed_messages() -> None:
    text = '{"type":"offer", "to":"b",  "sdp":"v=0\\r\\n", "x":[1,2]}'
    message = parse(text)
    assert isinstance(message, Offer)
    assert message.raw == text
    custom = parse('{"type":"chat","text":"hi","n":1}')
    assert isinstance(custom, Custom)
    assert custom.data == {"type": "chat", "text": "hi", "n": 1}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", ErrorCode.INVALID_JSON),
        ("{", ErrorCode.INVALID_JSON),
        ("not json", ErrorCode.INVALID_JSON),
        (b"\xff\xfe", ErrorCode.INVALID_JSON),
        ("[]", ErrorCode.BAD_MESSAGE),
        ('"join"', ErrorCode.BAD_MESSAGE),
        ("null", ErrorCode.BAD_MESSAGE),
        ("{}", ErrorCode.BAD_MESSAGE),
        ('{"type":""}', ErrorCode.BAD_MESSAGE),
        ('{"type":7}', ErrorCode.BAD_MESSAGE),
        ('{"type":"join","peerId":""}', ErrorCode.BAD_MESSAGE),
        ('{"type":"join","peerId":5}', ErrorCode.BAD_MESSAGE),
        ('{"type":"join","peerId":"a","room":5}', ErrorCode.BAD_MESSAGE),
        ('{"type":"join","peerId":"a","room":""}', ErrorCode.BAD_MESSAGE),
        ('{"type":"join","peerId":"a","resumeToken":[]}', ErrorCode.BAD_MESSAGE),
        (
            json.dumps({"type": "join", "peerId": "x" * (MAX_NAME_LENGTH + 1)}),
            ErrorCode.BAD_MESSAGE,
        ),
        ('{"type":"offer"}', ErrorCode.BAD_MESSAGE),
        ('{"type":"offer","sdp":1}', ErrorCode.BAD_MESSAGE),
        ('{"type":"answer","sdp":null}', ErrorCode.BAD_MESSAGE),
        ('{"type":"offer","sdp":"x","to":3}', ErrorCode.BAD_MESSAGE),
        ('{"type":"offer","sdp":"x","from":true}', ErrorCode.BAD_MESSAGE),
        ('{"type":"chat","to":["b"]}', ErrorCode.BAD_MESSAGE),
        ('{"type":"candidate","candidate":5}', ErrorCode.BAD_MESSAGE),
        ('{"type":"candidate","candidate":{"candidate":5}}', ErrorCode.BAD_MESSAGE),
        ('{"type":"candidate","candidate":{"candidate":"c","sdpMid":0}}', ErrorCode.BAD_MESSAGE),
        (
            '{"type":"candidate","candidate":{"candidate":"c","sdpMLineIndex":"0"}}',
            ErrorCode.BAD_MESSAGE,
        ),
        (
            '{"type":"candidate","candidate":{"candidate":"c","sdpMLineIndex":true}}',
            ErrorCode.BAD_MESSAGE,
        ),
        (
            '{"type":"candidate","candidate":{"candidate":"c","usernameFragment":1}}',
            ErrorCode.BAD_MESSAGE,
        ),
        ('{"type":"peer-list","peers":"a"}', ErrorCode.BAD_MESSAGE),
        ('{"type":"peer-list","peers":[1]}', ErrorCode.BAD_MESSAGE),
        ('{"type":"peer-joined"}', ErrorCode.BAD_MESSAGE),
        ('{"type":"peer-left","peerId":1}', ErrorCode.BAD_MESSAGE),
    ],
)
def test_parse_refuses_with_a_stable_code(text: str | bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        parse(text)
    assert info.value.code is code
    assert info.value.message  # readable, not empty
    assert str(info.value) == info.value.message


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("a\u200bb", "format characters"),  # zero-width space
        ("al\u200dice", "format characters"),  # zero-width joiner
        ("\u202emallory", "format characters"),  # right-to-left override
        ("\u2066bob\u2069", "format characters"),  # bidi isolates
        ("al\u00adice", "format characters"),  # soft hyphen
        ("\ufeffalice", "format characters"),  # byte order mark
        ("alice\U000e0041", "format characters"),  # a tag character
        ("x\ud800", "surrogates"),  # no character at all: "x?" to the others
        ("Jose\u0301", "NFC"),  # e + combining acute: "José" spelled another way
        ("\u212bngstr\u00f6m", "NFC"),  # the Angstrom sign: NFC makes it U+00C5
        ("\ufb01sh", None),  # a compatibility ligature is NFC: allowed
    ],
)
def test_look_alike_names_are_refused(name: str, rule: str | None) -> None:
    """Two names that look alike are one name or a refusal, never two peers or rooms."""
    for key in ("peerId", "room", "resumeToken"):
        text = json.dumps({"type": "join", "peerId": "a", key: name})
        if rule is None:
            assert isinstance(parse(text), Join)
            continue
        with pytest.raises(ProtocolError, match=rule) as info:
            parse(text)
        assert info.value.code is ErrorCode.BAD_MESSAGE and key in info.value.message


@pytest.mark.parametrize(
    "name",
    [
        "Jos\u00e9",
        "\u00c5ngstr\u00f6m",
        "\u0395\u03bb\u03ad\u03bd\u03b7",
        "\u65e5\u672c",
        "\U0001f600",
        "a b",
    ],
)
def test_names_in_nfc_from_any_script_are_taken_as_sent(name: str) -> None:
    assert parse(json.dumps({"type": "join", "peerId": name, "room": name})) == Join(
        P(name), RoomId(name)
    )


def test_error_codes_and_close_codes_are_the_documented_values() -> None:
    assert {c.value for c in ErrorCode} == {
        "invalid-json",
        "binary-frame",
        "bad-message",
        "reserved-type",
        "not-joined",
        "already-joined",
        "unknown-peer",
        "forged-from",
        "id-taken",
        "bad-resume-token",
        "room-full",
        "frame-too-large",
        "rate-limited",
        "join-timeout",
        "auth-required",
        "token-expired",
        "invalid-token",
        "unavailable",
    }
    assert {c.name: int(c) for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "MESSAGE_TOO_BIG": 1009,
        "TRY_AGAIN_LATER": 1013,
        "BAD_JOIN": 4400,
        "UNAUTHORIZED": 4407,
        "BAD_RESUME_TOKEN": 4401,
        "ROOM_FULL": 4403,
        "JOIN_TIMEOUT": 4408,
        "ID_TAKEN": 4409,
        "REPLACED": 4410,
        "SLOW_CONSUMER": 4508,
    }


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (PeerList(()), {"type": "peer-list", "peers": []}),
        (PeerJoined(P("b")), {"type": "peer-joined", "peerId": "b"}),
        (PeerLeft(P("b")), {"type": "peer-left", "peerId": "b"}),
        (Error("x", "y"), {"type": "error", "code": "x", "message": "y"}),
        (
            Candidate("candidate", P("a"), P("b"), candidate=BROWSER_CANDIDATE),
            {
                "type": "candidate",
                "from": "a",
                "to": "b",
                "candidate": {
                    "candidate": BROWSER_CANDIDATE.candidate,
                    "sdpMid": "0",
                    "sdpMLineIndex": 0,
                    "usernameFragment": "ab",
                },
            },
        ),
        (
            Custom("chat", P("a"), None, data={"from": "zz", "to": "q", "k": 1}),
            {
                "type": "chat",
                "from": "a",
                "k": 1,
            },
        ),
    ],
)
def test_serialize_uses_the_exact_wire_field_names(message: Message, expected: Any) -> None:
    assert json.loads(serialize(message)) == expected


def test_serialize_returns_the_raw_text_of_a_plain_routed_message() -> None:
    from signaling.protocol import Routed

    assert serialize(Routed("x", raw='{"type":"x",  "keep":"spacing"}')) == (
        '{"type":"x",  "keep":"spacing"}'
    )
    assert json.loads(serialize(Routed("x", P("a"), P("b")))) == {
        "type": "x",
        "from": "a",
        "to": "b",
    }


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"offer","to":"b","sdp":"v=0\\r\\no=- 1 2 IN IP4 0.0.0.0"}',
        '  {"type":"chat" , "text":"h\\u00e9llo \\"q\\"", "nested":{"a":[1,2.50,null]}}',
        '{"type":"chat","text":"\u00e9\u4e2d\U0001f600"}',
    ],
)
def test_stamp_sender_adds_from_and_keeps_every_other_byte(raw: str) -> None:
    stamped = stamp_sender(raw, P('al"ice'))
    assert json.loads(stamped) == {**json.loads(raw), "from": 'al"ice'}
    # Removing the inserted field gives back the original text exactly.
    inserted = '"from":"al\\"ice",'
    assert stamped.replace(inserted, "", 1) == raw
