"""The mesh decisions as pure functions: who offers, glare, hanging up, retrying.

Everything the agent decides about a pair of peers or about its signaling connection is
answered here from plain values (IDs, states, close codes), so the rules are tested as
tables without sockets or aiortc. Each rule returns its own enum, whose members are
exactly the outcomes that rule can have (:class:`OfferReply` for :func:`on_offer`,
:class:`CandidateUse` for :func:`on_candidate`...), so a type checker sees that a consumer
handles those and no others. :class:`peer.machine.RoomMachine` applies the rules about the
room and the negotiation messages; :mod:`peer.signaling_client` applies
:func:`on_join_refused` and :func:`reconnect_delay`.

The rules (docs/PROTOCOL.md "Negotiation"):

- The newcomer offers to every peer in its ``peer-list``; the others wait for its offer.
- A pair has one connection. Both sides offering at once is glare: the peer whose ID sorts
  lower is polite and yields (drops its own offer and answers); the other ignores the
  offer it did not ask for.
- ``peer-left`` closes that peer's connection. A working connection is held for a short
  grace first, because a server that shuts down sends ``peer-left`` for everyone just
  before closing every socket (1001): that is not the peers leaving.
- A failed connection (or one the other side closed while both are in the room) is
  re-offered by the side that offered it; the other side closes its half and waits for the
  new offer.
- An offer from the connection we hold (same DTLS certificate, same ICE credentials: a
  track added or removed) is applied to it in place; one from a new connection replaces
  ours. What aiortc cannot apply in place (an ICE restart, or glare that needs a rollback)
  is replaced by offering a new connection, which the other side takes over its own offer.
- A lost signaling connection is retried with capped exponential backoff and the room is
  joined again; working media connections are kept across it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from signaling.protocol import CloseCode, ErrorCode, PeerId


class Role(StrEnum):
    """Which side of a pair sent the offer that made the current connection."""

    OFFERER = "offerer"
    ANSWERER = "answerer"


class LinkState(StrEnum):
    """The agent's view of its connection to one remote peer."""

    OFFERING = "offering"  # our offer is out, no answer yet
    ANSWERING = "answering"  # their offer is being answered
    CONNECTING = "connecting"  # descriptions exchanged, ICE/DTLS under way
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


#: States in which a connection is (or is about to be) carrying media: worth keeping.
LIVE = frozenset({LinkState.CONNECTING, LinkState.CONNECTED})


class Origin(StrEnum):
    """Where a description comes from, compared with the connection we hold
    (:func:`peer.renegotiation.origin` reads it from the SDP)."""

    NEW_CONNECTION = "new-connection"  # we hold none, or another DTLS certificate: a new pc
    ICE_RESTART = "ice-restart"  # the same pc with new ICE credentials
    SAME_CONNECTION = "same-connection"  # the same pc and ICE session: a renegotiation


def is_polite(me: PeerId, other: PeerId) -> bool:
    """The peer whose ID sorts lower is polite: in glare it yields."""
    return me < other


class Listing(StrEnum):
    """What :func:`on_peer_list` does with each peer after a (re)join."""

    OFFER = "offer"  # open a new connection and send an offer
    KEEP = "keep"  # leave the connection as it is
    CLOSE = "close"  # close the connection (the peer is not listed and it does not work)


def on_peer_list(
    me: PeerId, peers: Iterable[PeerId], links: Mapping[PeerId, LinkState]
) -> dict[PeerId, Listing]:
    """What to do with each peer after (re)joining.

    Listed peers get an offer unless the connection to them is up (a negotiation cut by the
    lost socket starts over: its answer may have been lost with it). Peers we hold a
    connection to that are not listed are kept while it works (after a server restart they
    rejoin one by one) and closed otherwise.
    """
    decisions: dict[PeerId, Listing] = {}
    for peer in peers:
        if peer == me:
            continue
        state = links.get(peer)
        decisions[peer] = Listing.KEEP if state is LinkState.CONNECTED else Listing.OFFER
    for peer, state in links.items():
        if peer not in decisions:
            decisions[peer] = Listing.KEEP if state in LIVE else Listing.CLOSE
    return decisions


class Welcome(StrEnum):
    """What :func:`on_peer_joined` does about a peer that arrived."""

    KEEP = "keep"  # it only rejoined and our connection is up
    AWAIT_OFFER = "await-offer"  # drop any half-made connection: the newcomer offers


def on_peer_joined(state: LinkState | None) -> Welcome:
    """A peer arrived: it offers, unless it only rejoined and our connection is up.

    Anything short of connected is dropped: the newcomer offers to every peer it does not
    hold a connection to (:func:`on_peer_list`), and a half-made connection here could be
    waiting for an answer lost with its old socket.
    """
    return Welcome.KEEP if state is LinkState.CONNECTED else Welcome.AWAIT_OFFER


#: Seconds a peer that (re)joined has to send us its offer before we offer ourselves.
OFFER_WAIT = 2.0


class OfferWait(StrEnum):
    """What :func:`on_offer_awaited` does when the newcomer's offer did not come."""

    OFFER = "offer"  # offer ourselves
    KEEP = "keep"  # something is under way: leave it


def on_offer_awaited(state: LinkState | None) -> OfferWait:
    """:data:`OFFER_WAIT` after ``peer-joined``, no offer came: offer ourselves.

    The newcomer offers to peers it holds no working connection to; one that was cut off
    long enough for us to close our side may still think its side is up, and waits for
    nothing. Anything in progress (an offer being answered, ICE under way) is left alone.
    """
    if state is None or state in (LinkState.CLOSED, LinkState.FAILED):
        return OfferWait.OFFER
    return OfferWait.KEEP


class OfferReply(StrEnum):
    """How :func:`on_offer` takes an offer."""

    ANSWER = "answer"  # open a fresh connection (closing any old one) and answer
    RENEGOTIATE = "renegotiate"  # apply the offer to the connection we hold (no new one)
    OFFER = "offer"  # replace the connection by offering a new one (aiortc cannot apply it)
    IGNORE = "ignore"  # drop the offer (glare, and we are not polite)


def on_offer(
    me: PeerId,
    sender: PeerId,
    state: LinkState | None,
    origin: Origin = Origin.NEW_CONNECTION,
    *,
    offer_out: bool = False,
) -> OfferReply:
    """Answer, renegotiate in place, replace by offering, or ignore (glare).

    ``offer_out``: our own offer on the connection we hold awaits its answer (a
    renegotiation of ours). An offer from a new connection replaces ours, whatever ours was
    negotiating (the other side dropped it), except in glare between two new connections,
    where only the polite side yields. An offer from the same connection is applied in
    place while it is live. aiortc has no rollback and no ICE restart: in glare on the same
    connection the polite side, which should roll back, offers a new connection instead;
    an ICE restart, or a re-offer of a dead connection, is replaced the same way.
    """
    polite = is_polite(me, sender)
    if origin is Origin.NEW_CONNECTION:
        if state is LinkState.OFFERING and not polite:
            return OfferReply.IGNORE
        return OfferReply.ANSWER
    if offer_out:
        return OfferReply.OFFER if polite else OfferReply.IGNORE
    if origin is Origin.SAME_CONNECTION and state in LIVE:
        return OfferReply.RENEGOTIATE
    return OfferReply.OFFER


class AnswerUse(StrEnum):
    """What :func:`on_answer` does with an answer."""

    APPLY = "apply"  # apply it to the connection whose offer is out
    OFFER = "offer"  # replace the connection by offering a new one (aiortc cannot apply it)
    IGNORE = "ignore"  # stale: drop it


def on_answer(
    state: LinkState | None,
    *,
    offer_out: bool = False,
    origin: Origin = Origin.SAME_CONNECTION,
) -> AnswerUse:
    """An outstanding offer takes an answer; anything else is stale.

    An answer to our renegotiation of a live connection must come from that connection:
    one from a new connection (or with new ICE credentials) cannot be applied to it by
    aiortc, so the connection is replaced by offering a new one.
    """
    if state is LinkState.OFFERING:
        return AnswerUse.APPLY
    if offer_out and state in LIVE:
        return AnswerUse.APPLY if origin is Origin.SAME_CONNECTION else AnswerUse.OFFER
    return AnswerUse.IGNORE


class CandidateUse(StrEnum):
    """What :func:`on_candidate` does with a trickled candidate."""

    APPLY = "apply"  # add it to the connection now
    QUEUE = "queue"  # keep it until the remote description is set
    IGNORE = "ignore"  # no connection to add it to: drop it


def on_candidate(state: LinkState | None, has_remote_description: bool) -> CandidateUse:
    """aiortc drops candidates added before the remote description: queue those."""
    if state is None or state is LinkState.CLOSED:
        return CandidateUse.IGNORE
    return CandidateUse.APPLY if has_remote_description else CandidateUse.QUEUE


class Hangup(StrEnum):
    """How :func:`on_peer_left` hangs up on a peer that left."""

    CLOSE = "close"  # close the connection and forget the peer
    CLOSE_AFTER_GRACE = "close-after-grace"  # close unless the server turns out to be going away
    IGNORE = "ignore"  # no connection to close


def on_peer_left(state: LinkState | None) -> Hangup:
    """Close that peer's connection; a working one after a grace (see the module doc)."""
    if state is None:
        return Hangup.IGNORE
    return Hangup.CLOSE_AFTER_GRACE if state is LinkState.CONNECTED else Hangup.CLOSE


def keep_after_signaling_closed(close_code: int | None) -> bool:
    """Whether ``peer-left`` received just before the socket closed should be ignored.

    A server going away (1001) tells everyone ``peer-left`` on its way down; those peers
    did not leave, and their media connections keep working while everyone rejoins.
    """
    return close_code == CloseCode.GOING_AWAY


class Recovery(StrEnum):
    """What :func:`on_connection_state` does about a connection's new state."""

    KEEP = "keep"  # not lost: leave it
    CLOSE = "close"  # lost and its peer left: close it and forget the peer
    REOFFER = "reoffer"  # lost, we offered it: close and offer again
    AWAIT_REOFFER = "await-reoffer"  # lost, they offered it: close our half, they offer again


def on_connection_state(role: Role, state: LinkState, in_room: bool) -> Recovery:
    """React to ICE/DTLS: a connection lost while both are in the room is made again.

    Failed, or closed by the other side (which closes its half when it fails there, or
    when it replaces the connection): the side that offered offers again, the other waits
    for that offer. A peer no longer in the room is simply closed.
    """
    if state is not LinkState.FAILED and state is not LinkState.CLOSED:
        return Recovery.KEEP
    if not in_room:
        return Recovery.CLOSE
    return Recovery.REOFFER if role is Role.OFFERER else Recovery.AWAIT_REOFFER


#: Join attempts refused with ``id-taken`` before giving up: the server drops a dead
#: holder within its probe timeout (~2 s), so a few spaced retries cover it.
ID_TAKEN_ATTEMPTS = 6


class JoinRetry(StrEnum):
    """Whether :func:`on_join_refused` tries a refused join again."""

    RETRY = "retry"  # try the join again after a backoff
    FAIL = "fail"  # give up with a clear error


def on_join_refused(code: str, attempt: int, *, rejoin: bool) -> JoinRetry:
    """Whether a refused join is worth retrying.

    ``attempt`` counts the refusals so far for this join (1 for the first). A taken ID may
    be our own dead connection, which the server is probing: retry a few times. A full
    room or a bad token on a first join is the user's problem; on a rejoin we keep trying,
    since the room may free up and the media connections still work meanwhile.
    """
    if code in (ErrorCode.ID_TAKEN, ErrorCode.BAD_RESUME_TOKEN):
        return JoinRetry.RETRY if rejoin or attempt < ID_TAKEN_ATTEMPTS else JoinRetry.FAIL
    if code == ErrorCode.ROOM_FULL:
        return JoinRetry.RETRY if rejoin else JoinRetry.FAIL
    if code in (ErrorCode.RATE_LIMITED, ErrorCode.JOIN_TIMEOUT, ErrorCode.UNAVAILABLE):
        return JoinRetry.RETRY
    return JoinRetry.FAIL


#: Close codes after which the server refused us; the rest mean the connection was lost.
REFUSAL_CLOSE_CODES: dict[int, ErrorCode] = {
    CloseCode.BAD_JOIN: ErrorCode.BAD_MESSAGE,
    CloseCode.BAD_RESUME_TOKEN: ErrorCode.BAD_RESUME_TOKEN,
    CloseCode.ROOM_FULL: ErrorCode.ROOM_FULL,
    CloseCode.ID_TAKEN: ErrorCode.ID_TAKEN,
    CloseCode.UNAUTHORIZED: ErrorCode.INVALID_TOKEN,
}


#: Seconds between reconnect attempts, attempt by attempt; the last repeats. Quick while a
#: restarting server is likely to come back (seconds): at most 1 s (+25%) apart for the first
#: ~7 s, so a room is back within about a second of its server; then backing off to 5 s.
RECONNECT_DELAYS = (0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 4.0, 5.0)


def reconnect_delay(attempt: int, jitter: float, *, base: float = 0.25) -> float:
    """Seconds to wait before reconnect ``attempt`` (0 first), from :data:`RECONNECT_DELAYS`
    scaled by ``base`` (0.25: as listed).

    ``jitter`` in [0, 1) spreads a whole room reconnecting to a restarted server over
    +-25% so they do not all arrive in the same millisecond.
    """
    delay = RECONNECT_DELAYS[min(max(0, attempt), len(RECONNECT_DELAYS) - 1)] * (base / 0.25)
    return delay * (0.75 + 0.5 * jitter)
