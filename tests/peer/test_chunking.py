"""The ``meshpeer`` channel's framing (docs/PROTOCOL.md 16.2), without sockets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer.chunking import (
    MAX_FRAME,
    MAX_PIECE,
    Dropped,
    FrameKind,
    Message,
    Reassembler,
    frames,
    message_size,
)


def frame_size(frame: Message) -> int:
    return message_size(frame)


def deliver(reassembler: Reassembler, message: Message) -> list[Message | Dropped | None]:
    return [reassembler.feed(frame) for frame in frames(message)]


# -- the wire format, case by case ----------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("", [""]),
        ("hi", ["hi"]),
        ("é" * (MAX_FRAME // 2), ["é" * (MAX_FRAME // 2)]),  # exactly 16384 UTF-8 bytes
        (b"", [b"\x00"]),
        (b"abc", [b"\x00abc"]),
        (b"x" * MAX_PIECE, [b"\x00" + b"x" * MAX_PIECE]),
        (b"x" * MAX_FRAME, [b"\x01" + b"x" * MAX_PIECE, b"\x02x"]),
        ("a" * (MAX_FRAME + 1), [b"\x03" + b"a" * MAX_PIECE, b"\x04aa"]),
    ],
)
def test_frames(message: Message, expected: list[Message]) -> None:
    assert list(frames(message)) == expected


def test_text_is_cut_on_bytes_and_decoded_once_whole() -> None:
    """A 4-byte character across a piece boundary survives: pieces are joined first."""
    message = "a" * (MAX_PIECE - 2) + "\U0001f600" + "b" * 10
    cut = list(frames(message))
    assert len(cut) == 2 and cut[0][0] == FrameKind.TEXT_PIECE
    assert isinstance(cut[0], bytes) and cut[0][-2:] == "\U0001f600".encode()[:2]
    reassembler = Reassembler()
    assert [reassembler.feed(f) for f in cut] == [None, message]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "empty binary frame"),
        (b"\x05abc", "unknown kind 0x05"),
        (b"\xffabc", "unknown kind 0xff"),
    ],
)
def test_bad_frames_are_dropped_and_the_channel_goes_on(frame: bytes, reason: str) -> None:
    reassembler = Reassembler()
    result = reassembler.feed(frame)
    assert isinstance(result, Dropped) and reason in result.reason
    assert reassembler.feed(b"\x00ok") == b"ok"


def test_a_piece_of_the_other_kind_is_dropped_and_the_message_goes_on() -> None:
    reassembler = Reassembler()
    assert reassembler.feed(b"\x01ab") is None
    dropped = reassembler.feed(b"\x04zz")
    assert isinstance(dropped, Dropped) and "text message in the middle of a binary" in (
        dropped.reason
    )
    assert reassembler.feed("a whole text between pieces") == "a whole text between pieces"
    assert reassembler.feed(b"\x02cd") == b"abcd"


def test_over_the_limit_is_dropped_once_and_the_next_message_arrives() -> None:
    reassembler = Reassembler(limit=100)
    results = deliver(reassembler, b"x" * (3 * MAX_PIECE))
    assert results[:-1] == [None, None]
    last = results[-1]
    assert isinstance(last, Dropped) and last.size == 3 * MAX_PIECE
    assert "over the 100-byte limit" in last.reason
    assert reassembler.pending == 0
    assert deliver(reassembler, b"y" * 100) == [b"y" * 100]


def test_a_message_of_exactly_the_limit_arrives() -> None:
    reassembler = Reassembler(limit=MAX_PIECE + 1)
    assert deliver(reassembler, b"z" * (MAX_PIECE + 1))[-1] == b"z" * (MAX_PIECE + 1)


def test_invalid_utf8_text_is_dropped() -> None:
    reassembler = Reassembler()
    assert reassembler.feed(b"\x03\xff") is None
    dropped = reassembler.feed(b"\x04\xfe")
    assert isinstance(dropped, Dropped) and "not valid UTF-8" in dropped.reason


def test_abandon_reports_the_partial_message() -> None:
    reassembler = Reassembler()
    assert reassembler.abandon() is None
    cut = list(frames(b"q" * 100_000))
    for frame in cut[:3]:
        assert reassembler.feed(frame) is None
    assert reassembler.pending == 3 * MAX_PIECE
    dropped = reassembler.abandon()
    assert dropped == Dropped(
        f"a binary message cut off after {3 * MAX_PIECE} bytes: the channel closed", 3 * MAX_PIECE
    )
    assert reassembler.pending == 0 and reassembler.abandon() is None


# -- properties ---------------------------------------------------------------------------

#: Sizes around the frame and piece boundaries, and some far beyond.
EDGES = [0, 1, MAX_PIECE - 1, MAX_PIECE, MAX_FRAME, MAX_FRAME + 1, 2 * MAX_PIECE,
         2 * MAX_PIECE + 1, 5 * MAX_PIECE + 7]  # fmt: skip

UTF8 = st.characters(codec="utf-8")  # no lone surrogates: those have no UTF-8
#: Frames of every kind (and a few unknown ones) with short payloads, in any order.
FRAMES = st.builds(
    lambda kind, payload: bytes((kind,)) + payload, st.integers(0, 6), st.binary(max_size=40)
)


@st.composite
def binaries(draw: st.DrawFn) -> bytes:
    size = draw(st.sampled_from(EDGES) | st.integers(0, 4 * MAX_FRAME))
    return random.Random(draw(st.integers(0, 2**32))).randbytes(size)


@st.composite
def texts(draw: st.DrawFn) -> str:
    """Short runs repeated into long texts, so multi-byte characters straddle piece ends."""
    run = draw(st.text(UTF8, min_size=1, max_size=20))
    return run * draw(st.integers(0, 3 * MAX_FRAME // len(run.encode())))


messages = binaries() | texts()


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, max_size=4))
def test_round_trip(sent: list[Message]) -> None:
    """Every frame fits; the receiver gives back each message whole, once, at its last frame."""
    reassembler = Reassembler()
    received: list[Message] = []
    for message in sent:
        cut = list(frames(message))
        assert all(frame_size(frame) <= MAX_FRAME for frame in cut)
        results = [reassembler.feed(frame) for frame in cut]
        assert results[:-1] == [None] * (len(cut) - 1)
        last = results[-1]
        assert last is not None and not isinstance(last, Dropped)
        received.append(last)
        assert reassembler.pending == 0
    assert received == sent
    assert [type(m) for m in received] == [type(m) for m in sent]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(FRAMES | st.binary(max_size=2) | st.text(UTF8, max_size=10), max_size=30),
    st.integers(0, 64),
)
def test_garbage_never_raises_and_stays_within_the_limit(
    garbage: list[Message], limit: int
) -> None:
    """Whatever a broken sender sends: no exception, never more than ``limit`` bytes kept."""
    reassembler = Reassembler(limit=limit)
    for frame in garbage:
        result = reassembler.feed(frame)
        assert result is None or isinstance(result, str | bytes | Dropped)
        assert sum(len(p) for p in reassembler._parts) <= limit
    # and a well-formed message afterwards still arrives once the broken one is abandoned
    reassembler.abandon()
    assert deliver(reassembler, b"ok") == [b"ok"]
