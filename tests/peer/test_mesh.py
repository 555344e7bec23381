"""The mesh decisions as tables: no sockets, no aiortc."""

from __future__ import annotations

import pytest

from peer import mesh
from peer.mesh import (
    AnswerUse,
    CandidateUse,
    Hangup,
    JoinRetry,
    LinkState,
    Listing,
    OfferReply,
    OfferWait,
    Origin,
    Recovery,
    Role,
    Welcome,
)
from signaling.protocol import CloseCode, ErrorCode, PeerId

A, B, C = PeerId("alice"), PeerId("bob"), PeerId("carol")
S = LinkState


def test_lower_id_is_polite() -> None:
    assert mesh.is_polite(A, B)
    assert not mesh.is_polite(B, A)


@pytest.mark.parametrize(
    ("peers", "links", "expected"),
    [
        # first join: offer to everyone already there
        ((A, C), {}, {A: Listing.OFFER, C: Listing.OFFER}),
        # the reference server's empty peer-list
        ((), {}, {}),
        # our own ID in the list is skipped
        ((B, A), {}, {A: Listing.OFFER}),
        # rejoin: working connections are kept, broken ones offered again
        ((A, C), {A: S.CONNECTED, C: S.FAILED}, {A: Listing.KEEP, C: Listing.OFFER}),
        # half-made connections start over: an answer may have been lost with the socket
        ((A,), {A: S.CONNECTING}, {A: Listing.OFFER}),
        # a negotiation cut by the lost socket starts over
        ((A, C), {A: S.OFFERING, C: S.ANSWERING}, {A: Listing.OFFER, C: Listing.OFFER}),
        # not listed (yet): kept while it works (the server restarted), else closed
        ((), {A: S.CONNECTED, C: S.OFFERING}, {A: Listing.KEEP, C: Listing.CLOSE}),
        ((), {A: S.FAILED}, {A: Listing.CLOSE}),
    ],
)
def test_on_peer_list(
    peers: tuple[PeerId, ...], links: dict[PeerId, LinkState], expected: dict[PeerId, Listing]
) -> None:
    assert mesh.on_peer_list(B, peers, links) == expected


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (None, Welcome.AWAIT_OFFER),
        (S.CONNECTED, Welcome.KEEP),
        (S.CONNECTING, Welcome.AWAIT_OFFER),
        (S.OFFERING, Welcome.AWAIT_OFFER),
        (S.ANSWERING, Welcome.AWAIT_OFFER),
        (S.FAILED, Welcome.AWAIT_OFFER),
        (S.CLOSED, Welcome.AWAIT_OFFER),
    ],
)
def test_on_peer_joined(state: LinkState | None, expected: Welcome) -> None:
    assert mesh.on_peer_joined(state) is expected


@pytest.mark.parametrize(
    ("me", "sender", "state", "expected"),
    [
        (B, A, None, OfferReply.ANSWER),
        # glare: the lower ID (alice) yields, the higher (bob) ignores the offer
        (A, B, S.OFFERING, OfferReply.ANSWER),
        (B, A, S.OFFERING, OfferReply.IGNORE),
        # a new offer replaces a connection in any other state (the peer restarted)
        (B, A, S.CONNECTED, OfferReply.ANSWER),
        (B, A, S.ANSWERING, OfferReply.ANSWER),
        (B, A, S.FAILED, OfferReply.ANSWER),
        (B, A, S.CONNECTING, OfferReply.ANSWER),
    ],
)
def test_on_offer(
    me: PeerId, sender: PeerId, state: LinkState | None, expected: OfferReply
) -> None:
    assert mesh.on_offer(me, sender, state) is expected


def test_glare_resolves_to_one_connection() -> None:
    """Both offer at once: exactly one side answers, whichever order the IDs come in."""
    for me, other in ((A, B), (B, A), (B, C)):
        mine = mesh.on_offer(me, other, S.OFFERING)
        theirs = mesh.on_offer(other, me, S.OFFERING)
        assert {mine, theirs} == {OfferReply.ANSWER, OfferReply.IGNORE}


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (S.OFFERING, AnswerUse.APPLY),
        (None, AnswerUse.IGNORE),
        (S.CONNECTED, AnswerUse.IGNORE),
        (S.ANSWERING, AnswerUse.IGNORE),
    ],
)
def test_on_answer(state: LinkState | None, expected: AnswerUse) -> None:
    assert mesh.on_answer(state) is expected


NEW, RESTART, SAME = Origin.NEW_CONNECTION, Origin.ICE_RESTART, Origin.SAME_CONNECTION


@pytest.mark.parametrize(
    ("me", "state", "origin", "offer_out", "expected"),
    [
        # a track added or removed on a live connection: applied in place
        (B, S.CONNECTED, SAME, False, OfferReply.RENEGOTIATE),
        (A, S.CONNECTING, SAME, False, OfferReply.RENEGOTIATE),
        # a new certificate: a new connection replaces ours, even while we renegotiate it
        (B, S.CONNECTED, NEW, False, OfferReply.ANSWER),
        (B, S.CONNECTED, NEW, True, OfferReply.ANSWER),
        (A, S.CONNECTED, NEW, True, OfferReply.ANSWER),
        # glare between two new connections: as before, only the polite side yields
        (B, S.OFFERING, NEW, True, OfferReply.IGNORE),
        (A, S.OFFERING, NEW, True, OfferReply.ANSWER),
        # glare on the live connection: the polite side cannot roll back: it starts over
        (A, S.CONNECTED, SAME, True, OfferReply.OFFER),
        (B, S.CONNECTED, SAME, True, OfferReply.IGNORE),
        # what aiortc cannot apply in place is replaced by a new connection we offer
        (B, S.CONNECTED, RESTART, False, OfferReply.OFFER),
        (A, S.FAILED, RESTART, False, OfferReply.OFFER),
        (B, S.FAILED, SAME, False, OfferReply.OFFER),
        (B, S.CLOSED, SAME, False, OfferReply.OFFER),
    ],
)
def test_on_offer_on_a_connection_we_hold(
    me: PeerId, state: LinkState, origin: Origin, offer_out: bool, expected: OfferReply
) -> None:
    sender = B if me == A else A
    assert mesh.on_offer(me, sender, state, origin, offer_out=offer_out) is expected


def test_renegotiation_glare_ends_with_one_side_offering() -> None:
    """Both renegotiate the live connection at once: the impolite side ignores the other's
    offer, the polite side offers a new connection, which the impolite side answers."""
    for me, other in ((A, B), (B, A)):
        mine = mesh.on_offer(me, other, S.CONNECTED, SAME, offer_out=True)
        theirs = mesh.on_offer(other, me, S.CONNECTED, SAME, offer_out=True)
        assert {mine, theirs} == {OfferReply.OFFER, OfferReply.IGNORE}
        ignoring, offering = (me, other) if mine is OfferReply.IGNORE else (other, me)
        # its own offer still out, it takes the new connection's
        assert mesh.on_offer(ignoring, offering, S.CONNECTED, NEW, offer_out=True) is (
            OfferReply.ANSWER
        )


@pytest.mark.parametrize(
    ("state", "offer_out", "origin", "expected"),
    [
        # the answer to our renegotiation of a live connection
        (S.CONNECTED, True, SAME, AnswerUse.APPLY),
        (S.CONNECTING, True, SAME, AnswerUse.APPLY),
        # ... from another connection, or with new ICE credentials: aiortc cannot apply it
        (S.CONNECTED, True, NEW, AnswerUse.OFFER),
        (S.CONNECTED, True, RESTART, AnswerUse.OFFER),
        # no offer of ours out: stale
        (S.CONNECTED, False, SAME, AnswerUse.IGNORE),
        (S.FAILED, True, SAME, AnswerUse.IGNORE),
        # a new connection's answer (no remote description yet: NEW by definition)
        (S.OFFERING, True, NEW, AnswerUse.APPLY),
    ],
)
def test_on_answer_to_a_renegotiation(
    state: LinkState, offer_out: bool, origin: Origin, expected: AnswerUse
) -> None:
    assert mesh.on_answer(state, offer_out=offer_out, origin=origin) is expected


@pytest.mark.parametrize(
    ("state", "has_remote", "expected"),
    [
        (None, False, CandidateUse.IGNORE),
        (S.CLOSED, True, CandidateUse.IGNORE),
        (S.OFFERING, False, CandidateUse.QUEUE),
        (S.ANSWERING, False, CandidateUse.QUEUE),
        (S.CONNECTING, True, CandidateUse.APPLY),
        (S.CONNECTED, True, CandidateUse.APPLY),
    ],
)
def test_on_candidate(state: LinkState | None, has_remote: bool, expected: CandidateUse) -> None:
    assert mesh.on_candidate(state, has_remote) is expected


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (None, Hangup.IGNORE),
        (S.CONNECTED, Hangup.CLOSE_AFTER_GRACE),
        (S.CONNECTING, Hangup.CLOSE),
        (S.OFFERING, Hangup.CLOSE),
        (S.FAILED, Hangup.CLOSE),
    ],
)
def test_on_peer_left(state: LinkState | None, expected: Hangup) -> None:
    assert mesh.on_peer_left(state) is expected


def test_only_a_server_going_away_cancels_peer_left() -> None:
    assert mesh.keep_after_signaling_closed(CloseCode.GOING_AWAY)
    for code in (None, 1000, 1006, CloseCode.REPLACED, CloseCode.SLOW_CONSUMER):
        assert not mesh.keep_after_signaling_closed(code)


@pytest.mark.parametrize(
    ("role", "state", "in_room", "expected"),
    [
        (Role.OFFERER, S.FAILED, True, Recovery.REOFFER),
        (Role.ANSWERER, S.FAILED, True, Recovery.AWAIT_REOFFER),
        (Role.OFFERER, S.FAILED, False, Recovery.CLOSE),
        (Role.ANSWERER, S.FAILED, False, Recovery.CLOSE),
        # the other side closed its half (it failed there, or it is replacing the connection)
        (Role.OFFERER, S.CLOSED, True, Recovery.REOFFER),
        (Role.ANSWERER, S.CLOSED, True, Recovery.AWAIT_REOFFER),
        (Role.OFFERER, S.CLOSED, False, Recovery.CLOSE),
        (Role.OFFERER, S.CONNECTED, True, Recovery.KEEP),
        (Role.ANSWERER, S.CONNECTING, False, Recovery.KEEP),
    ],
)
def test_on_connection_state(
    role: Role, state: LinkState, in_room: bool, expected: Recovery
) -> None:
    assert mesh.on_connection_state(role, state, in_room) is expected


@pytest.mark.parametrize(
    ("code", "attempt", "rejoin", "expected"),
    [
        (ErrorCode.ID_TAKEN, 1, False, JoinRetry.RETRY),
        (ErrorCode.ID_TAKEN, mesh.ID_TAKEN_ATTEMPTS, False, JoinRetry.FAIL),
        (ErrorCode.ID_TAKEN, 50, True, JoinRetry.RETRY),
        (ErrorCode.BAD_RESUME_TOKEN, 1, True, JoinRetry.RETRY),
        (ErrorCode.ROOM_FULL, 1, False, JoinRetry.FAIL),
        (ErrorCode.ROOM_FULL, 1, True, JoinRetry.RETRY),
        (ErrorCode.RATE_LIMITED, 1, False, JoinRetry.RETRY),
        (ErrorCode.UNAVAILABLE, 1, False, JoinRetry.RETRY),  # shared rooms unreachable: later
        (ErrorCode.BAD_MESSAGE, 1, False, JoinRetry.FAIL),
        ("some-future-code", 1, True, JoinRetry.FAIL),
    ],
)
def test_on_join_refused(code: str, attempt: int, rejoin: bool, expected: JoinRetry) -> None:
    assert mesh.on_join_refused(code, attempt, rejoin=rejoin) is expected


def test_reconnect_delay_is_quick_while_a_server_restarts_then_backs_off() -> None:
    delays = [mesh.reconnect_delay(n, 0.5) for n in range(14)]
    assert delays[:3] == pytest.approx([0.25, 0.5, 1.0])
    assert delays == sorted(delays)
    assert sum(delays[:8]) == pytest.approx(6.75)  # at most 1 s apart for the first ~7 s
    assert max(delays[:8]) == pytest.approx(1.0)
    assert max(delays) == pytest.approx(5.0) == delays[-1]
    assert mesh.reconnect_delay(0, 0.0) == pytest.approx(0.25 * 0.75)
    assert mesh.reconnect_delay(0, 0.999) < 0.25 * 1.25


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (None, OfferWait.OFFER),  # no offer came: it thinks its old connection is still up
        (LinkState.CLOSED, OfferWait.OFFER),
        (LinkState.FAILED, OfferWait.OFFER),
        (LinkState.ANSWERING, OfferWait.KEEP),  # its offer came: being answered
        (LinkState.CONNECTING, OfferWait.KEEP),
        (LinkState.CONNECTED, OfferWait.KEEP),
        (LinkState.OFFERING, OfferWait.KEEP),
    ],
)
def test_on_offer_awaited(state: LinkState | None, expected: OfferWait) -> None:
    assert mesh.on_offer_awaited(state) is expected
