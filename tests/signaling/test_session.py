"""The per-connection state machine with an injected clock: phases, limits, from stamping."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from signaling.protocol import DEFAULT_ROOM, CloseCode, Error, ErrorCode, Join, PeerId, RoomId
from signaling.session import (
    Decision,
    Forward,
    Ignore,
    JoinRequest,
    Limits,
    Phase,
    Reply,
    Session,
)

LIMITS = Limits(max_frame_bytes=1000, rate=10.0, burst=5)


def joined(name: str = "alice", room: str = "lobby", limits: Limits = LIMITS) -> Session:
    session = Session(limits, now=0.0)
    session.joined(PeerId(name), RoomId(room))
    return session


def error_code(decision: Decision) -> tuple[str, CloseCode | None]:
    assert isinstance(decision, Reply), decision
    assert decision.error.message
    return decision.error.code, decision.close


# ---------------------------------------------------------------------------
# Limits


def test_default_limits() -> None:
    limits = Limits()
    assert (limits.max_frame_bytes, limits.max_peers, limits.send_queue) == (65536, 8, 512)
    assert (limits.join_timeout, limits.heartbeat, limits.probe_timeout) == (10.0, 5.0, 2.0)
    assert (limits.rate, limits.burst) == (100.0, 200)


@pytest.mark.parametrize(
    "field",
    ["max_frame_bytes", "max_peers", "burst", "send_queue"],
)
def test_integer_limits_must_be_at_least_one(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        replace(Limits(), **{field: 0})


@pytest.mark.parametrize("field", ["join_timeout", "heartbeat", "probe_timeout", "rate"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_durations_and_rate_must_be_positive(field: str, value: float) -> None:
    changes: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        replace(Limits(), **changes)


# ---------------------------------------------------------------------------
# Phases


def test_join_request_picks_the_room_join_then_url_then_default() -> None:
    join = '{"type":"join","peerId":"a","room":"r1"}'
    plain = '{"type":"join","peerId":"a"}'
    assert Session(LIMITS, 0.0, RoomId("url")).receive(join, 0.0) == JoinRequest(
        Join(PeerId("a"), RoomId("r1")), RoomId("r1")
    )
    assert Session(LIMITS, 0.0, RoomId("url")).receive(plain, 0.0) == JoinRequest(
        Join(PeerId("a")), RoomId("url")
    )
    assert Session(LIMITS, 0.0).receive(plain, 0.0) == JoinRequest(Join(PeerId("a")), DEFAULT_ROOM)
    assert DEFAULT_ROOM == "default"


def test_phases_move_from_awaiting_join_to_joined_to_closed() -> None:
    session = Session(LIMITS, 0.0)
    assert session.phase is Phase.AWAITING_JOIN
    session.joined(PeerId("a"), RoomId("r"))
    assert (session.phase, session.peer_id, session.room) == (Phase.JOINED, "a", "r")
    session.closed()
    assert session.phase.value == "closed"
    assert isinstance(session.receive('{"type":"chat"}', 0.0), Ignore)


def test_a_join_timeout_closes_a_session_that_has_not_joined() -> None:
    session = Session(LIMITS, 0.0)
    assert error_code(session.join_timed_out()) == (ErrorCode.JOIN_TIMEOUT, CloseCode.JOIN_TIMEOUT)
    assert session.phase is Phase.CLOSING
    # A join that arrives while the connection closes is not acted on.
    assert isinstance(session.receive('{"type":"join","peerId":"a"}', 0.0), Ignore)
    assert isinstance(session.receive_binary(0.0), Ignore)
    session.closed()
    assert session.phase is Phase.CLOSED


def test_a_join_timeout_leaves_a_joined_session_alone() -> None:
    session = joined()
    assert isinstance(session.join_timed_out(), Ignore)
    assert session.phase is Phase.JOINED


def test_a_refused_join_closes_with_the_refusals_code() -> None:
    session = Session(LIMITS, 0.0)
    assert isinstance(session.receive('{"type":"join","peerId":"a"}', 0.0), JoinRequest)
    refusal = Error(ErrorCode.ROOM_FULL, "room 'r' is full (2 peers)")
    assert session.refused(refusal, CloseCode.ROOM_FULL) == Reply(refusal, CloseCode.ROOM_FULL)
    assert session.phase is Phase.CLOSING
    # A join sent right behind the refused one must not get in.
    assert isinstance(session.receive('{"type":"join","peerId":"a"}', 0.0), Ignore)


def test_a_membership_ends_once_and_nothing_is_relayed_after() -> None:
    session = joined("a", "r")
    assert session.leave() == ("a", "r")
    assert session.leave() is None
    assert (session.phase, session.peer_id) == (Phase.CLOSING, None)
    assert isinstance(session.receive('{"type":"offer","to":"b","sdp":"x"}', 0.0), Ignore)
    assert Session(LIMITS, 0.0).leave() is None  # never joined
    gone = joined("a", "r")
    gone.closed()
    assert gone.leave() == ("a", "r")
    assert gone.phase is Phase.CLOSED  # a closed socket stays closed


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"offer","to":"b","sdp":"x"}',
        '{"type":"chat"}',
        '{"type":"peer-left","peerId":"b"}',
    ],
)
def test_anything_before_join_is_not_joined_and_keeps_the_connection(text: str) -> None:
    assert error_code(Session(LIMITS, 0.0).receive(text, 0.0)) == (ErrorCode.NOT_JOINED, None)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('{"type":"join"}', ErrorCode.BAD_MESSAGE),
        ('{"type":"join","peerId":7}', ErrorCode.BAD_MESSAGE),
        ('{"type":"join","peerId":"a","room":""}', ErrorCode.BAD_MESSAGE),
        ('{"type":"join","peerId":"a","resumeToken":1}', ErrorCode.BAD_MESSAGE),
    ],
)
def test_a_bad_join_closes_with_4400(text: str, code: ErrorCode) -> None:
    session = Session(LIMITS, 0.0)
    assert error_code(session.receive(text, 0.0)) == (code, CloseCode.BAD_JOIN)
    # Nothing that arrives after it is acted on: the connection is closing.
    assert isinstance(session.receive('{"type":"join","peerId":"a"}', 0.0), Ignore)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("nope", ErrorCode.INVALID_JSON),
        ("[1]", ErrorCode.BAD_MESSAGE),
        ("{}", ErrorCode.BAD_MESSAGE),
    ],
)
def test_garbage_before_join_is_a_per_message_error(text: str, code: ErrorCode) -> None:
    session = Session(LIMITS, 0.0)
    assert error_code(session.receive(text, 0.0)) == (code, None)
    assert isinstance(session.receive('{"type":"join","peerId":"a"}', 0.0), JoinRequest)


def test_second_join_is_already_joined_and_keeps_the_connection() -> None:
    session = joined()
    assert error_code(session.receive('{"type":"join","peerId":"b"}', 0.0)) == (
        ErrorCode.ALREADY_JOINED,
        None,
    )
    assert session.phase is Phase.JOINED


@pytest.mark.parametrize("kind", ["peer-list", "peer-joined", "peer-left", "error"])
def test_server_only_types_are_reserved(kind: str) -> None:
    text = json.dumps({"type": kind, "peerId": "bob", "peers": [], "code": "x", "message": "y"})
    assert error_code(joined().receive(text, 0.0)) == (ErrorCode.RESERVED_TYPE, None)


def test_binary_frames_are_refused_without_closing() -> None:
    assert error_code(joined().receive_binary(0.0)) == (ErrorCode.BINARY_FRAME, None)
    assert error_code(Session(LIMITS, 0.0).receive_binary(0.0)) == (ErrorCode.BINARY_FRAME, None)
    closing = Session(LIMITS, 0.0)
    closing.closed()
    assert isinstance(closing.receive_binary(0.0), Ignore)


def test_binary_frames_count_against_the_rate_like_text() -> None:
    session = joined()  # burst 5
    for _ in range(4):
        assert error_code(session.receive_binary(0.0))[0] == ErrorCode.BINARY_FRAME
    assert isinstance(session.receive('{"type":"chat"}', 0.0), Forward)
    assert error_code(session.receive_binary(0.0))[0] == ErrorCode.RATE_LIMITED
    assert isinstance(session.receive_binary(0.0), Ignore)
    assert isinstance(session.receive('{"type":"chat"}', 0.0), Ignore)


# ---------------------------------------------------------------------------
# Routing decisions and the sender


@pytest.mark.parametrize(
    ("text", "kind", "to"),
    [
        ('{"type":"offer","to":"bob","sdp":"v=0"}', "offer", "bob"),
        ('{"type":"answer","to":"bob","sdp":"v=0"}', "answer", "bob"),
        ('{"type":"candidate","to":"bob","candidate":null}', "candidate", "bob"),
        ('{"type":"chat","text":"all"}', "chat", None),
        ('{"type":"whatever-app-type","x":{"y":[1]}}', "whatever-app-type", None),
    ],
)
def test_forward_stamps_from_and_keeps_the_payload(text: str, kind: str, to: str | None) -> None:
    decision = joined().receive(text, 0.0)
    assert isinstance(decision, Forward)
    assert (decision.type, decision.to) == (kind, to)
    assert json.loads(decision.data) == {**json.loads(text), "from": "alice"}
    assert decision.data.replace('"from":"alice",', "", 1) == text  # byte for byte


def test_own_from_is_forwarded_unchanged() -> None:
    text = '{"from":"alice", "type":"offer","to":"bob","sdp":"v=0"}'
    decision = joined().receive(text, 0.0)
    assert isinstance(decision, Forward)
    assert decision.data == text


@pytest.mark.parametrize("sender", ['""', "null"])
def test_empty_from_is_replaced_by_the_sender(sender: str) -> None:
    decision = joined().receive('{"type":"chat","from":' + sender + ',"n":1}', 0.0)
    assert isinstance(decision, Forward)
    obj = json.loads(decision.data)
    assert obj == {"type": "chat", "from": "alice", "n": 1}
    assert decision.data.count('"from"') == 1


@pytest.mark.parametrize("forged", ["bob", "Alice", "alice "])
def test_forged_from_is_refused_without_closing(forged: str) -> None:
    session = joined()
    text = json.dumps({"type": "offer", "from": forged, "to": "bob", "sdp": "x"})
    assert error_code(session.receive(text, 0.0)) == (ErrorCode.FORGED_FROM, None)
    assert isinstance(session.receive('{"type":"chat"}', 0.0), Forward)


# ---------------------------------------------------------------------------
# Size and rate


def test_frame_size_is_counted_in_utf8_bytes() -> None:
    limits = replace(LIMITS, max_frame_bytes=100)
    session = joined(limits=limits)
    head = '{"type":"chat","t":"'
    fits = head + "x" * (100 - len(head) - 2) + '"}'
    assert len(fits.encode()) == 100
    assert isinstance(session.receive(fits, 0.0), Forward)
    wide = head + "\u00e9" * 40 + '"}'  # 62 characters, 102 bytes
    assert len(wide) < 100 < len(wide.encode())
    assert error_code(session.receive(wide, 0.0)) == (ErrorCode.FRAME_TOO_LARGE, None)
    assert isinstance(session.receive('{"type":"chat"}', 0.0), Forward)


def test_oversized_join_is_refused_before_anything_else() -> None:
    limits = replace(LIMITS, max_frame_bytes=50)
    text = json.dumps({"type": "join", "peerId": "a" * 60})
    assert error_code(Session(limits, 0.0).receive(text, 0.0)) == (
        ErrorCode.FRAME_TOO_LARGE,
        None,
    )


def test_rate_limit_allows_a_burst_then_the_sustained_rate() -> None:
    session = joined()  # rate 10/s, burst 5
    chat = '{"type":"chat"}'
    for _ in range(5):
        assert isinstance(session.receive(chat, 0.0), Forward)
    first = session.receive(chat, 0.0)
    assert error_code(first) == (ErrorCode.RATE_LIMITED, None)
    # One error per episode: the rest of the flood is dropped silently.
    for _ in range(50):
        assert isinstance(session.receive(chat, 0.0), Ignore)
    # 0.1 s later one token is back (10/s).
    assert isinstance(session.receive(chat, 0.1), Forward)
    assert error_code(session.receive(chat, 0.1)) == (ErrorCode.RATE_LIMITED, None)
    # After a long pause the bucket is full again, but no fuller than the burst.
    results = [session.receive(chat, 100.0) for _ in range(6)]
    assert [type(r) for r in results] == [Forward] * 5 + [Reply]


def test_sustained_rate_is_admitted_indefinitely() -> None:
    session = joined()
    chat = '{"type":"chat"}'
    for i in range(200):
        assert isinstance(session.receive(chat, i * 0.1), Forward), i


def test_dropped_messages_do_not_count_as_errors_or_forwards() -> None:
    session = joined(limits=replace(LIMITS, burst=1, rate=1.0))
    assert isinstance(session.receive('{"type":"chat"}', 0.0), Forward)
    assert error_code(session.receive('{"type":"chat","from":"mallory"}', 0.0))[0] == (
        ErrorCode.RATE_LIMITED
    )
    assert isinstance(session.receive('{"type":"chat","from":"mallory"}', 0.0), Ignore)


# ---------------------------------------------------------------------------
# Byte budget: what a connection's messages cost the server to deliver

BUDGET = replace(
    LIMITS, max_frame_bytes=20_000, rate=1e6, burst=10**6, byte_rate=1000.0, byte_burst=10_000
)


def chat_of(size: int, to: str | None = None) -> str:
    """A chat frame of exactly ``size`` bytes, to one peer or (None) to the room."""
    head = '{"type":"chat",' + (f'"to":"{to}",' if to else "") + '"t":"'
    text = head + "x" * (size - len(head) - 2) + '"}'
    assert len(text.encode()) == size
    return text


def test_default_byte_budget_never_bites_normal_signaling() -> None:
    """A member of a full room that offers to every other member (10 KB SDP) and
    broadcasts a 1 KB frame to them, every second for a minute, is never limited, even in a
    room of 32 (--max-peers raised for bots); one that broadcasts maximal frames at the
    message rate is, within its first second."""
    limits = replace(Limits(), max_peers=32)
    assert (limits.byte_rate, limits.byte_burst) == (512 * 1024, 4 * 1024 * 1024)
    others = limits.max_peers - 1
    session = joined(limits=limits)
    offer = json.dumps({"type": "offer", "to": "bob", "sdp": "v=0\r\n" + "a" * 10_000})
    status = chat_of(1000)
    for second in range(60):
        for i in range(others):
            now = second + i / 100
            assert isinstance(session.receive(offer, now, others), Forward), (second, i)
        assert isinstance(session.receive(status, second + 0.5, others), Forward), second
    flooder = joined(limits=limits)
    biggest = chat_of(limits.max_frame_bytes)
    results = [flooder.receive(biggest, n / limits.rate, others) for n in range(100)]
    assert error_code(next(r for r in results if not isinstance(r, Forward)))[0] == (
        ErrorCode.RATE_LIMITED
    )


def test_a_broadcast_costs_its_size_times_its_recipients() -> None:
    """Same frames, same count: sent to one peer they all pass; broadcast to 4 others,
    only as many as the burst pays for (10,000 bytes: 2 of 4 x 1,000)."""
    routed = joined(limits=BUDGET)
    for _ in range(10):
        assert isinstance(routed.receive(chat_of(1000, to="bob"), 0.0, 4), Forward)
    broadcaster = joined(limits=BUDGET)
    for _ in range(2):
        assert isinstance(broadcaster.receive(chat_of(1000), 0.0, 4), Forward)
    assert error_code(broadcaster.receive(chat_of(1000), 0.0, 4)) == (
        ErrorCode.RATE_LIMITED,
        None,
    )
    # Still 2,000 bytes in the bucket: a routed frame of that size passes, a broadcast to
    # nobody costs nothing.
    assert isinstance(broadcaster.receive(chat_of(2000, to="bob"), 0.0, 4), Forward)
    assert isinstance(broadcaster.receive(chat_of(1000), 0.0, 0), Forward)


def test_an_exhausted_byte_budget_drops_like_the_message_rate() -> None:
    """One ``rate-limited`` error per episode, the rest dropped silently, the connection
    kept; the budget refills at byte_rate, up to byte_burst."""
    session = joined(limits=BUDGET)
    big = chat_of(5000)
    assert [type(session.receive(big, 0.0, 2)) for _ in range(3)] == [Forward, Reply, Ignore]
    assert isinstance(session.receive(chat_of(100, to="bob"), 0.0, 2), Ignore)
    assert isinstance(session.receive('{"type":"offer","to":"bob","sdp":"x"}', 0.0, 2), Ignore)
    # 4 s at 1,000 bytes/s: 4,000 bytes back, not enough for 2 x 5,000.
    assert isinstance(session.receive(big, 4.0, 2), Ignore)
    assert isinstance(session.receive(chat_of(4000, to="bob"), 4.0, 2), Forward)
    # After a long pause the bucket is full again, but no fuller than the burst.
    assert isinstance(session.receive(big, 100.0, 2), Forward)
    assert error_code(session.receive(chat_of(100), 100.0, 2))[0] == ErrorCode.RATE_LIMITED


def test_a_message_larger_than_the_byte_burst_needs_a_full_budget_and_leaves_a_debt() -> None:
    """A 5,000-byte broadcast to 3 others (15,000 > byte_burst) is not refused forever:
    it passes when the bucket is full, and the debt is repaid at byte_rate before the next."""
    session = joined(limits=BUDGET)
    big = chat_of(5000)
    assert isinstance(session.receive(big, 0.0, 3), Forward)
    assert error_code(session.receive(chat_of(100, to="bob"), 0.0, 3))[0] == (
        ErrorCode.RATE_LIMITED
    )
    # -5,000 after it: 5.1 s later just 100 bytes are back.
    assert isinstance(session.receive(chat_of(100, to="bob"), 5.1, 3), Forward)
    # 9.9 s later 9,900 bytes are back: a bucket not quite full refuses it.
    assert error_code(session.receive(big, 15.0, 3))[0] == ErrorCode.RATE_LIMITED
    assert isinstance(session.receive(big, 15.2, 3), Forward)  # full again


def test_the_byte_budget_counts_utf8_bytes() -> None:
    session = joined(limits=BUDGET)
    wide = '{"type":"chat","to":"bob","t":"' + "\u00e9" * 4000 + '"}'  # 8,034 bytes
    assert len(wide) < 5000 < len(wide.encode())
    assert isinstance(session.receive(wide, 0.0), Forward)
    assert error_code(session.receive(wide, 0.0))[0] == ErrorCode.RATE_LIMITED
    # A lone surrogate (never in a frame off the wire, which is UTF-8) is priced, not fatal.
    lone = joined(limits=BUDGET).receive('{"type":"chat","t":"\ud800"}', 0.0)
    assert isinstance(lone, Forward)


def test_refused_frames_cost_no_bytes() -> None:
    """Only what is delivered costs bytes; refused frames cost a message token each."""
    session = joined(limits=BUDGET)
    for text in ("x" * 15_000, json.dumps({"type": "chat", "from": "bob", "t": "x" * 15_000})):
        assert error_code(session.receive(text, 0.0, 4))[0] != ErrorCode.RATE_LIMITED
    assert isinstance(session.receive(chat_of(2000), 0.0, 4), Forward)


@pytest.mark.parametrize(("field", "value"), [("byte_rate", 0.0), ("byte_burst", 0)])
def test_byte_budget_limits_must_be_positive(field: str, value: float) -> None:
    changes: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=field):
        replace(Limits(), **changes)
