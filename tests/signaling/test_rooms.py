"""RoomTable decisions: join order, full rooms, taken IDs, resume, stale leaves. No I/O."""

from __future__ import annotations

import pytest

from signaling.protocol import CloseCode, ErrorCode, PeerId, RoomId
from signaling.rooms import Accepted, Refused, RoomTable

P, R = PeerId, RoomId
LOBBY, OTHER = R("lobby"), R("other")


class Conn:
    """A connection handle: identity is all the table cares about."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Conn({self.name})"


def accept(
    table: RoomTable[Conn],
    room: RoomId,
    peer: str,
    conn: Conn | None = None,
    token: str | None = None,
    new_token: str | None = None,
) -> Accepted[Conn]:
    outcome = table.join(room, P(peer), conn or Conn(peer), token, new_token or f"tok-{peer}")
    assert isinstance(outcome, Accepted), outcome
    return outcome


def refuse(
    table: RoomTable[Conn], room: RoomId, peer: str, token: str | None = None
) -> Refused[Conn]:
    outcome = table.join(room, P(peer), Conn(peer + "'"), token, "unused")
    assert isinstance(outcome, Refused), outcome
    return outcome


def test_peer_list_is_in_join_order_and_excludes_the_joiner() -> None:
    table: RoomTable[Conn] = RoomTable(max_peers=10)
    names = ["zed", "amy", "mo", "bob"]
    for i, name in enumerate(names):
        outcome = accept(table, LOBBY, name)
        assert outcome.peers == tuple(names[:i])
        assert outcome.member.peer_id == name
        assert outcome.member.resume_token == f"tok-{name}"
        assert outcome.replaced is None
    assert [m.peer_id for m in table.members(LOBBY)] == names


def test_rooms_are_independent() -> None:
    table: RoomTable[Conn] = RoomTable(max_peers=1)
    accept(table, LOBBY, "a")
    assert accept(table, OTHER, "a").peers == ()  # same ID, other room: fine
    assert table.room_count == 2
    assert table.peer_count == 2
    assert table.members(R("nowhere")) == ()
    assert table.lookup(R("nowhere"), P("a")) is None


def test_full_room_refuses_with_4403_and_frees_up_after_a_leave() -> None:
    table: RoomTable[Conn] = RoomTable(max_peers=2)
    a = accept(table, LOBBY, "a")
    accept(table, LOBBY, "b")
    refused = refuse(table, LOBBY, "c")
    assert (refused.code, refused.close_code, refused.holder) == (
        ErrorCode.ROOM_FULL,
        CloseCode.ROOM_FULL,
        None,
    )
    assert "full" in refused.message
    assert table.leave(LOBBY, P("a"), a.member.conn) == (P("b"),)
    assert accept(table, LOBBY, "c").peers == (P("b"),)


def test_taken_id_without_token_is_refused_with_the_holder_to_probe() -> None:
    table: RoomTable[Conn] = RoomTable(max_peers=10)
    owner = Conn("owner")
    accept(table, LOBBY, "a", owner)
    refused = refuse(table, LOBBY, "a")
    assert (refused.code, refused.close_code) == (ErrorCode.ID_TAKEN, CloseCode.ID_TAKEN)
    assert refused.holder is owner
    assert table.lookup(LOBBY, P("a")) is not None
    assert table.lookup(LOBBY, P("a")).conn is owner  # type: ignore[union-attr]


def test_taken_id_is_refused_even_when_the_room_is_full() -> None:
    table: RoomTable[Conn] = RoomTable(max_peers=1)
    accept(table, LOBBY, "a")
    assert refuse(table, LOBBY, "a").code is ErrorCode.ID_TAKEN


@pytest.mark.parametrize("token", ["wrong", "", "tok-a ", "TOK-A", "tok-\u00e1", "\U0001f600"])
def test_wrong_resume_token_is_refused_with_4401_and_no_probe(token: str) -> None:
    table: RoomTable[Conn] = RoomTable(max_peers=10)
    owner = Conn("owner")
    accept(table, LOBBY, "a", owner)
    refused = refuse(table, LOBBY, "a", token)
    assert (refused.code, refused.close_code, refused.holder) == (
        ErrorCode.BAD_RESUME_TOKEN,
        CloseCode.BAD_RESUME_TOKEN,
        None,
    )
    assert table.lookup(LOBBY, P("a")).conn is owner  # type: ignore[union-attr]


def test_resume_takes_the_id_over_and_hands_out_a_new_token() -> None:
    table: RoomTable[Conn] = RoomTable(max_peers=2)  # full: a resume does not need a seat
    old, new = Conn("old"), Conn("new")
    accept(table, LOBBY, "a", old)
    accept(table, LOBBY, "b")
    outcome = accept(table, LOBBY, "a", new, token="tok-a", new_token="tok-a2")
    assert outcome.replaced is not None
    assert outcome.replaced.conn is old
    assert outcome.peers == (P("b"),)
    assert outcome.member.resume_token == "tok-a2"
    # The resumed peer goes to the end of the join order.
    assert [m.peer_id for m in table.members(LOBBY)] == ["b", "a"]
    # The old token no longer works, the new one does.
    assert refuse(table, LOBBY, "a", "tok-a").code is ErrorCode.BAD_RESUME_TOKEN
    assert accept(table, LOBBY, "a", token="tok-a2").replaced.conn is new  # type: ignore[union-attr]


def test_resume_of_an_id_nobody_holds_is_a_plain_join() -> None:
    table: RoomTable[Conn] = RoomTable(max_peers=10)
    outcome = accept(table, LOBBY, "a", token="stale-token")
    assert outcome.replaced is None


def test_leave_by_a_stale_connection_returns_none_and_changes_nothing() -> None:
    table: RoomTable[Conn] = RoomTable(max_peers=10)
    old, new = Conn("old"), Conn("new")
    accept(table, LOBBY, "a", old)
    accept(table, LOBBY, "b")
    accept(table, LOBBY, "a", new, token="tok-a")
    assert table.leave(LOBBY, P("a"), old) is None  # replaced: owes no peer-left
    assert table.lookup(LOBBY, P("a")).conn is new  # type: ignore[union-attr]
    assert table.leave(LOBBY, P("zz"), old) is None  # never joined
    assert table.leave(OTHER, P("a"), new) is None  # wrong room
    assert table.leave(LOBBY, P("a"), new) == (P("b"),)
    assert table.leave(LOBBY, P("a"), new) is None  # only once


def test_last_leave_removes_the_room() -> None:
    table: RoomTable[Conn] = RoomTable(max_peers=10)
    a = accept(table, LOBBY, "a")
    assert table.room_count == 1
    assert table.leave(LOBBY, P("a"), a.member.conn) == ()
    assert (table.room_count, table.peer_count) == (0, 0)
    assert table.room_members(LOBBY) == {}
