"""Property tests of the room machine (peer.machine): random room traffic, no event loop.

The harness carries out the machine's results as the agent and the negotiator do (offers
make a connection we offered, closes drop it, timers are remembered until fired) with
plain link objects, and keeps a model of the room built only from the messages: who the
server lists. The invariants checked after every step:
- at most one link per remote peer, each its own peer's, never one to ourselves;
- the membership the agent shows equals the model's; no empty record lingers;
- the newcomer offers to everyone listed that it has no working connection to, and
  ``peer-joined`` is emitted once per arrival;
- ``peer-left`` closes the peer's link (a working one after the grace, unless it comes
  back), or forgets the peer when there is none;
- a failed connection to a member is offered again by the side that offered it only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from peer import events as ev
from peer.machine import RoomMachine
from peer.mesh import AnswerUse, CandidateUse, LinkState, OfferReply, Origin, Role
from peer.room import Room
from signaling.protocol import CloseCode, PeerId

ME = PeerId("me")
OTHERS = [PeerId(p) for p in ("ann", "bob", "zed")]


@dataclass(eq=False)
class Link:
    remote: PeerId
    role: Role
    state: LinkState


@dataclass
class Harness:
    room: Room = field(default_factory=Room)
    members: set[PeerId] = field(default_factory=set)  # the model: what the server said
    graces: set[PeerId] = field(default_factory=set)
    offer_waits: set[PeerId] = field(default_factory=set)
    events: list[ev.Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.machine = RoomMachine(ME, self.room)

    def offer(self, peer: PeerId) -> None:  # Negotiator.offer
        if self.room.is_member(peer):
            self.room[peer].link = Link(peer, Role.OFFERER, LinkState.OFFERING)

    def close(self, peer: PeerId, *, forget: bool = True) -> None:  # Negotiator.close_link
        record = self.room.get(peer)
        if record is not None and record.link is not None:
            record.link = None
            if forget:
                record.failures = record.reoffers = 0
            self.room.tidy(peer)

    def check(self) -> None:
        links = self.room.links
        assert ME not in links
        assert all(link.remote == peer for peer, link in links.items())
        assert len({id(link) for link in links.values()}) == len(links)
        assert self.room.members == self.members
        assert all(not record.empty for record in self.room)


def play(h: Harness, action: tuple[Any, ...]) -> None:
    kind, peer = action[0], action[1]
    if kind == "list":
        listed = [p for p in OTHERS if p in action[2]] + [ME]
        before = set(h.members)
        working = {p for p, link in h.room.links.items() if link.state is LinkState.CONNECTED}
        listed_step = h.machine.peer_list(listed, rejoin=bool(before))
        h.members = set(listed) - {ME}
        joined = [e.peer for e in listed_step.events if isinstance(e, ev.PeerJoined)]
        assert sorted(joined) == sorted(h.members - before)
        assert set(listed_step.offer) == h.members - working  # the newcomer offers
        assert not set(listed_step.close) & h.members
        for p in listed_step.offer:
            h.offer(p)
        for p in listed_step.close:
            h.close(p)
    elif kind == "joined":
        arrived = h.machine.peer_joined(peer)
        assert arrived is not None
        h.graces.discard(peer)  # the agent releases the grace
        h.members.add(peer)
        assert arrived.events == [ev.PeerJoined(peer)]
        if arrived.close:
            h.close(peer)
        if arrived.await_offer is not None:
            h.offer_waits.add(peer)
        link = h.room.link(peer)
        assert link is None or link.state is LinkState.CONNECTED
    elif kind == "left":
        link = h.room.link(peer)
        departed = h.machine.peer_left(peer)
        h.members.discard(peer)
        assert departed.forget == (link is None)
        assert departed.close == (link is not None and link.state is not LinkState.CONNECTED)
        assert departed.grace == (link is not None and link.state is LinkState.CONNECTED)
        if departed.close:
            h.close(peer)
        if departed.grace:
            h.graces.add(peer)
    elif kind == "their-offer" and peer in h.members:  # the server relays from members only
        h.room[peer].link = Link(peer, Role.ANSWERER, LinkState.ANSWERING)
    elif kind == "state":
        link = h.room.link(peer)
        if link is None:
            return
        link.state = action[2]
        changed = h.machine.link_state(link)
        assert changed is not None
        lost = link.state in (LinkState.FAILED, LinkState.CLOSED)
        member = peer in h.members
        assert changed.close == (lost and not member)
        assert changed.reoffer == (lost and member and link.role is Role.OFFERER)
        assert changed.await_reoffer == (lost and member and link.role is Role.ANSWERER)
        if changed.close:
            h.close(peer)
        elif changed.await_reoffer:
            h.close(peer, forget=False)
        elif changed.reoffer:
            h.offer(peer)  # after the backoff, as long as nothing replaced the link
    elif kind == "grace-over" and peer in h.graces:
        h.graces.discard(peer)
        if h.machine.grace_over(peer):
            assert peer not in h.members
            h.close(peer)
    elif kind == "offer-awaited" and peer in h.offer_waits:
        h.offer_waits.discard(peer)
        if h.machine.offer_awaited(peer):
            h.offer(peer)
    elif kind == "lost" and h.machine.signaling_lost(action[2]):
        h.graces.clear()  # the agent keeps those connections
    h.check()


peers = st.sampled_from(OTHERS)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("list"), st.none(), st.sets(peers)),
        st.tuples(st.sampled_from(["joined", "left", "their-offer"]), peers),
        st.tuples(st.just("state"), peers, st.sampled_from(list(LinkState))),
        st.tuples(st.sampled_from(["grace-over", "offer-awaited"]), peers),
        st.tuples(st.just("lost"), st.none(), st.sampled_from([None, CloseCode.GOING_AWAY])),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(actions)
def test_random_room_traffic_keeps_every_invariant(script: list[tuple[Any, ...]]) -> None:
    h = Harness()
    for action in script:
        play(h, action)
    for peer in list(h.members):  # everyone leaves: the links go, the records too
        play(h, ("left", peer))
        if peer in h.graces:
            play(h, ("grace-over", peer))
    for peer in h.room.links:  # kept though unlisted (a server restart): until they fail
        play(h, ("state", peer, LinkState.FAILED))
    assert h.room.links == {}
    # What is left are failure counts of peers whose failed connection we closed before
    # they left (kept as the agent always did: they pick the TURN URL if they come back).
    assert all(record.failures and not record.member for record in h.room)


def test_the_newcomer_offers_to_everyone_there() -> None:
    h = Harness()
    step = h.machine.peer_list([*OTHERS, ME], rejoin=False)
    assert step.offer == OTHERS
    assert step.events[0] == ev.Joined(tuple(OTHERS), False)


@dataclass(eq=False)
class Negotiating(Link):
    offer_out: bool = False
    has_remote_description: bool = False


def test_offers_answers_and_candidates_are_decided_from_the_record() -> None:
    """The negotiation transitions read the peer's link (state, our offer out, remote
    description) and return the rule's outcome; ``me`` is polite to zed, not to ann."""
    h = Harness()
    ann, zed = PeerId("ann"), PeerId("zed")
    h.machine.peer_list([ann, zed, ME], rejoin=False)
    assert h.machine.offer(ann, Origin.NEW_CONNECTION) is OfferReply.ANSWER  # no link
    assert h.machine.answer(ann, Origin.NEW_CONNECTION) is AnswerUse.IGNORE
    assert h.machine.candidate(ann) is CandidateUse.IGNORE
    for peer in (ann, zed):  # our offers are out on new connections
        h.room[peer].link = Negotiating(peer, Role.OFFERER, LinkState.OFFERING, offer_out=True)
    assert h.machine.candidate(ann) is CandidateUse.QUEUE
    assert h.machine.offer(ann, Origin.NEW_CONNECTION) is OfferReply.IGNORE  # glare
    assert h.machine.offer(zed, Origin.NEW_CONNECTION) is OfferReply.ANSWER
    assert h.machine.answer(ann, Origin.NEW_CONNECTION) is AnswerUse.APPLY
    live = Negotiating(ann, Role.OFFERER, LinkState.CONNECTED, has_remote_description=True)
    h.room[ann].link = live
    assert h.machine.candidate(ann) is CandidateUse.APPLY
    assert h.machine.offer(ann, Origin.SAME_CONNECTION) is OfferReply.RENEGOTIATE
    assert h.machine.answer(ann, Origin.SAME_CONNECTION) is AnswerUse.IGNORE  # stale
    live.offer_out = True  # our renegotiation is out
    assert h.machine.offer(ann, Origin.SAME_CONNECTION) is OfferReply.IGNORE
    assert h.machine.answer(ann, Origin.SAME_CONNECTION) is AnswerUse.APPLY
    assert h.machine.answer(ann, Origin.ICE_RESTART) is AnswerUse.OFFER
