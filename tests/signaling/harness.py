"""The model behind the property tests (``test_properties``, ``test_cluster_properties``):
clients with outboxes and views of their rooms, random actions, and ``step``, which plays one
action and checks every invariant (the list is in test_properties' docstring)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from signaling.protocol import ErrorCode, PeerId, RoomId
from signaling.registry import LocalRegistry
from signaling.rooms import Refused
from signaling.session import Forward, Ignore, JoinRequest, Limits, Reply, Session

T = TypeVar("T")
LIMITS = Limits(max_peers=3, rate=1e9, burst=10**9)  # 4 slots: rooms can fill up
SLOTS = range(4)
PEERS = ["a", "b", "c", "d"]
ROOMS = [None, None, "r1", "r2"]


def event(name: str) -> None:
    """Count ``name`` in Hypothesis' statistics (pytest --hypothesis-show-statistics)."""
    with contextlib.suppress(InvalidArgument):  # outside a Hypothesis test: nothing to count
        hypothesis_event(name)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (LocalRegistry's) to completion, loop-free."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("LocalRegistry suspended: it must complete without awaiting")


@dataclass(eq=False)
class Outbox:
    """A connection as the registry sees it: it records, and the harness reads."""

    cid: int
    frames: list[str] = field(default_factory=list)
    read: int = 0
    probes: int = 0
    replaced: bool = False

    def push(self, data: str) -> None:
        self.frames.append(data)

    def push_fanout(self, data: str) -> None:
        self.frames.append(data)

    def probe(self) -> None:
        self.probes += 1

    def replace(self) -> None:
        self.replaced = True


@dataclass(eq=False)
class Client:
    outbox: Outbox
    session: Session
    closed: bool = False
    requested: tuple[str, str] | None = None  # (room, peer) of the pending join
    joined: tuple[str, str] | None = None  # (room, peer) once the peer-list arrived
    view: list[str] = field(default_factory=list)
    token: str | None = None


class Harness:
    def __init__(self) -> None:
        self.registry = LocalRegistry(LIMITS.max_peers)
        self.now = 0.0
        self.cids = 0
        self.slots: dict[int, Client] = {}
        self.clients: list[Client] = []
        #: Join order per room, as the model sees it.
        self.order: dict[str, list[str]] = {}
        self.tokens: list[str] = []
        #: Relayed message number -> connections that must still receive it.
        self.pending: dict[int, set[int]] = {}
        self.sent: dict[int, tuple[str, str]] = {}  # n -> (room, sender)
        self.messages = 0

    # -- the adapter's part -----------------------------------------------------
    def client(self, slot: int) -> Client:
        current = self.slots.get(slot)
        if current is None or current.closed:
            self.cids += 1
            current = Client(Outbox(self.cids), Session(LIMITS, self.now))
            self.slots[slot] = current
            self.clients.append(current)
        return current

    async def receive(self, client: Client, text: str) -> Forward | Reply | Ignore | JoinRequest:
        self.now += 0.001
        decision = client.session.receive(text, self.now)
        if isinstance(decision, JoinRequest):
            outcome = await self.join(decision.room, decision.join, client)
            if isinstance(outcome, Refused):
                event(f"join refused: {outcome.code}")
                client.session.closed()
                await self.close(client)
            else:
                client.session.joined(decision.join.peer_id, decision.room)
                client.requested = (decision.room, decision.join.peer_id)
                event("join accepted" if outcome.replaced is None else "resumed")
                if outcome.replaced is not None:
                    old = self.by_outbox(outcome.replaced.conn)
                    assert old.outbox.replaced
                    await self.close(old)  # the adapter closes it with 4410
            return decision
        if isinstance(decision, Forward):
            room, sender = client.session.room, client.session.peer_id
            assert room is not None and sender is not None
            registry = self.registry_of(client)
            if decision.to is None:
                registry.broadcast(room, sender, decision.data)
            else:
                registry.send(room, decision.to, decision.data)
        elif isinstance(decision, Reply) and decision.close is not None:
            await self.close(client)
        return decision

    async def close(self, client: Client) -> None:
        """The connection ended (any reason): what the adapter's finally block does."""
        if client.closed:
            return
        client.closed = True
        session = client.session
        session.closed()
        if session.peer_id is not None and session.room is not None:
            await self.leave(RoomId(session.room), session.peer_id, client)
        if client.joined is not None:
            room, peer = client.joined
            self.order[room].remove(peer)
            client.joined = None

    def by_outbox(self, outbox: object) -> Client:
        (found,) = [c for c in self.clients if c.outbox is outbox]
        return found

    # -- the registry's part (one registry here; one per node across nodes) --------
    def registry_of(self, client: Client) -> Any:
        return self.registry

    async def join(self, room: RoomId, join: Any, client: Client) -> Any:
        return run(self.registry.join(room, join, client.outbox))

    async def leave(self, room: RoomId, peer: PeerId, client: Client) -> None:
        run(self.registry.leave(room, peer, client.outbox))

    async def settled(self, condition: Callable[[], bool]) -> None:
        """Assert ``condition``: here at once; across nodes, once their messages arrived."""
        assert condition()

    # -- the model's part -------------------------------------------------------
    def live(self) -> dict[tuple[str, str], Client]:
        return {c.joined: c for c in self.clients if c.joined is not None and not c.closed}

    def expect_route(self, client: Client, n: int, to: str | None) -> None:
        assert client.joined is not None
        room, sender = client.joined
        members = {k: c for k, c in self.live().items() if k[0] == room}
        if to is None:
            targets = {c.outbox.cid for k, c in members.items() if k[1] != sender}
        else:
            target = members.get((room, to))
            targets = {target.outbox.cid} if target is not None else set()
        self.pending[n] = targets
        self.sent[n] = (room, sender)

    async def check(self, joiner: Client | None) -> None:
        """Read every client's new frames and check all invariants."""
        self.read_frames(joiner)
        self.check_state(self.members(), self.registry.counts())

    def read_frames(self, joiner: Client | None, clients: list[Client] | None = None) -> None:
        """Check each frame that arrived since the last read (what must hold at any time)."""
        for client in self.clients if clients is None else clients:
            new = client.outbox.frames[client.outbox.read :]
            client.outbox.read = len(client.outbox.frames)
            if client.closed and client is not joiner:
                assert not new, f"frames for a closed connection: {new}"
            for text in new:
                self.check_frame(client, json.loads(text), joiner)

    def members(self) -> dict[str, list[tuple[str, object]]]:
        """The registry's rooms: members in join order, with their connections."""
        rooms = {k[0] for k in self.live()} | set(self.order)
        return {
            room: [(m.peer_id, m.conn) for m in self.registry.table.members(RoomId(room))]
            for room in rooms
        }

    def check_state(
        self, members: dict[str, list[tuple[str, object]]], counts: tuple[int, int]
    ) -> None:
        """What must hold once every frame sent so far has arrived."""
        assert all(not targets for targets in self.pending.values()), self.pending
        live = self.live()
        table = {(room, peer): conn for room, found in members.items() for peer, conn in found}
        assert {k: c.outbox for k, c in live.items()} == table
        for (room, peer), client in live.items():
            present = {p for (r, p) in live if r == room}
            assert set(client.view) == present - {peer}, (client.view, present, peer)
            assert len(client.view) == len(set(client.view))
        for room, order in self.order.items():
            assert order == [peer for peer, _ in members.get(room, [])]
        assert counts == (len({k[0] for k in live}), len(live))

    def check_frame(self, client: Client, frame: dict[str, Any], joiner: Client | None) -> None:
        kind = frame["type"]
        if kind == "peer-list":
            assert client is joiner and client.requested is not None, frame
            room, peer = client.requested
            assert frame["room"] == room
            assert peer not in frame["peers"], frame
            assert frame["peers"] == self.order.get(room, []), (frame, self.order)
            assert frame["resumeToken"] not in self.tokens
            client.joined, client.view, client.token = (room, peer), list(frame["peers"]), None
            client.token = frame["resumeToken"]
            self.tokens.append(frame["resumeToken"])
            self.order.setdefault(room, []).append(peer)
            return
        assert client.joined is not None, (frame, "before its peer-list")
        if kind == "peer-joined":
            assert frame["peerId"] not in client.view, (frame, client.view)
            assert frame["peerId"] != client.joined[1]
            client.view.append(frame["peerId"])
        elif kind == "peer-left":
            event("peer-left delivered")
            assert frame["peerId"] in client.view, (frame, client.view)
            client.view.remove(frame["peerId"])
        else:
            n = frame["n"]
            room, sender = self.sent[n]
            assert frame["from"] == sender
            assert client.joined[0] == room, "crossed rooms"
            assert client.outbox.cid in self.pending[n], (frame, "not for this client")
            event("relayed message delivered")
            self.pending[n].discard(client.outbox.cid)


# ---------------------------------------------------------------------------
# Actions

slots = st.sampled_from(list(SLOTS))
join_action = st.tuples(
    st.just("join"),
    slots,
    st.sampled_from(["own", "own", *PEERS]),  # "own": slot i mostly joins as PEERS[i]
    st.sampled_from(ROOMS),
    st.sampled_from(["none", "none", "holder", "stale", "wrong"]),
)
send_action = st.tuples(
    st.just("send"),
    slots,
    st.sampled_from(["offer", "candidate", "chat", "chat", "peer-left"]),
    st.sampled_from([None, None, None, *PEERS, "nobody"]),
    st.sampled_from(["none", "none", "self", "forged"]),
)
garbage_action = st.tuples(
    st.just("garbage"),
    slots,
    st.sampled_from(["{", "[]", '{"type":7}', '{"type":"join"}', '{"type":"offer","to":"a"}']),
)
close_action = st.tuples(st.just("close"), slots)
fail_probes_action = st.tuples(st.just("fail-probes"))
BY_KIND = {
    "join": join_action,
    "send": send_action,
    "garbage": garbage_action,
    "close": close_action,
    "fail-probes": fail_probes_action,
}
# Weighted by repetition (st.one_of would weigh each strategy alike): mostly traffic.
any_action = st.sampled_from(
    ["join"] * 3 + ["send"] * 8 + ["garbage", "close", "close", "fail-probes"]
).flatmap(BY_KIND.__getitem__)
# A few joins first, so that most scripts have rooms with several peers to talk in.
actions = st.tuples(
    st.lists(join_action, min_size=2, max_size=5),
    st.lists(any_action, min_size=10, max_size=50),
).map(lambda parts: parts[0] + parts[1])


async def step(h: Harness, action: tuple[Any, ...]) -> None:
    kind = action[0]
    if kind == "join":
        _, slot, peer, room, token_kind = action
        peer = PEERS[slot] if peer == "own" else peer
        client = h.client(slot)
        fields: dict[str, Any] = {"type": "join", "peerId": peer}
        if room is not None:
            fields["room"] = room
        holder = h.live().get((room or "default", peer))
        if token_kind == "holder" and holder is not None:
            fields["resumeToken"] = holder.token
        elif token_kind == "stale" and h.tokens:
            fields["resumeToken"] = h.tokens[0]
        elif token_kind == "wrong":
            fields["resumeToken"] = "wrong"
        probes = holder.outbox.probes if holder is not None else 0
        was_joined = client.joined is not None
        decision = await h.receive(client, json.dumps(fields))
        if was_joined:
            assert isinstance(decision, Reply)
            assert decision.error.code == ErrorCode.ALREADY_JOINED
        await h.check(client)
        if not was_joined and holder is not None and "resumeToken" not in fields:
            assert client.closed  # id-taken, and the holder gets a liveness probe
            await h.settled(lambda: holder.outbox.probes == probes + 1)
    elif kind == "send":
        _, slot, msg_type, to, from_kind = action
        client = h.client(slot)
        h.messages += 1
        n = h.messages
        fields = {"type": msg_type, "n": n}
        if msg_type in ("offer", "answer"):
            fields["sdp"] = "v=0"
        if to is not None:
            fields["to"] = to
        own = client.joined[1] if client.joined else "x"
        if from_kind == "self":
            fields["from"] = own
        elif from_kind == "forged":
            fields["from"] = own + "-forged"
        text = json.dumps(fields)
        routable = client.joined is not None and msg_type != "peer-left" and from_kind != "forged"
        if routable:
            h.expect_route(client, n, to)
        decision = await h.receive(client, text)
        assert isinstance(decision, Forward) == routable, (decision, fields)
        await h.check(None)
    elif kind == "garbage":
        _, slot, text = action
        client = h.client(slot)
        decision = await h.receive(client, text)
        assert isinstance(decision, Reply)
        await h.check(None)
    elif kind == "close":
        closing = h.slots.get(action[1])
        if closing is not None:
            await h.close(closing)
        await h.check(None)
    elif kind == "fail-probes":
        # What the adapter does when a probed peer stays silent past probe_timeout.
        # One at a time, reading after each: a peer-left sent to a probed peer before its own
        # turn to close is a frame for a live connection, not one for a closed connection.
        for client in h.clients:
            if client.outbox.probes and not client.closed:
                await h.close(client)
                await h.check(None)
        await h.check(None)
