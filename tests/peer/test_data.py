"""Data channels between real aiortc agents through a real signaling server (PROTOCOL.md 16).

The agents here send no media (``media=None``): only the data channels are under test, and
a connection without encoders leaves the CPU to aiortc's pure-Python SCTP.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from peer import events as ev
from peer.agent import Agent
from peer.channel_limits import MESHPEER, DataLimits
from peer.datachannel import DataChannel
from peer.errors import MeshpeerError
from signaling.protocol import PeerId
from tests.peer.helpers import join_command
from tests.signaling.clients import clients
from tests.support import REPO, RunningServer, eventually, seconds

pytestmark = pytest.mark.slow


class Inbox:
    """Every data event one agent emits, in order."""

    def __init__(self, agent: Agent) -> None:
        self.events: list[ev.Event] = []
        self.times: list[float] = []  # time.monotonic() of each event (the loop's clock)
        agent.add_listener(self._add)

    def _add(self, event: ev.Event) -> None:
        self.events.append(event)
        self.times.append(time.monotonic())

    def received(self, peer: str, channel: str = MESHPEER) -> list[str | bytes]:
        return [
            e.data
            for e in self.events
            if isinstance(e, ev.DataReceived) and e.peer == peer and e.channel == channel
        ]

    def dropped(self, peer: str, *, incoming: bool = False) -> list[ev.DataDropped]:
        return [e for _, e in self.dropped_at(peer, incoming=incoming)]

    def dropped_at(
        self, peer: str, *, incoming: bool = False
    ) -> list[tuple[float, ev.DataDropped]]:
        """Each drop with the time.monotonic() at which it was reported."""
        return [
            (t, e)
            for t, e in zip(self.times, self.events, strict=True)
            if isinstance(e, ev.DataDropped) and e.peer == peer and e.incoming is incoming
        ]

    def opened(self, peer: str, label: str = MESHPEER) -> list[DataChannel]:
        return [
            e.channel
            for e in self.events
            if isinstance(e, ev.ChannelOpened) and e.peer == peer and e.label == label
        ]


@asynccontextmanager
async def data_agents(
    url: str, names: Sequence[str], **kwargs: Any
) -> AsyncIterator[list[tuple[Agent, Inbox]]]:
    """Media-less agents joined in order, each with its inbox; all leave afterwards."""
    joined: list[tuple[Agent, Inbox]] = []
    try:
        for name in names:
            agent = Agent(url, room="test", peer_id=name, stats_interval=None, **kwargs)
            inbox = Inbox(agent)
            await agent.join()
            joined.append((agent, inbox))
        everyone = {PeerId(name) for name in names}
        await eventually(
            lambda: all(everyone - {a.peer_id} <= a.members for a, _ in joined),
            seconds(10),
            "everyone to know everyone",
        )
        yield joined
    finally:
        await asyncio.gather(*(agent.leave() for agent, _ in joined))


def channel_to(agent: Agent, peer: str) -> DataChannel:
    return agent._data.meshpeer[PeerId(peer)]


async def test_text_both_ways_in_order_and_to_everyone(server: RunningServer) -> None:
    """Sent right after joining (before any channel is open): queued, then delivered."""
    async with data_agents(server.ws_url, ["bob", "carol", "alice"]) as trio:
        (bob, bob_in), (carol, carol_in), (alice, alice_in) = trio
        assert alice.send_data("hello everyone") == 2  # alice came last: she knows both
        assert alice.send_data("only bob", to="bob") == 1
        assert alice.send_data("nobody", to="zed") == 0
        for i in range(20):
            alice.send_data(f"line {i}")
        await eventually(
            lambda: len(bob_in.received("alice")) == 22 and len(carol_in.received("alice")) == 21,
            seconds(10),
            "alice's messages at bob and carol",
        )
        lines = [f"line {i}" for i in range(20)]
        assert bob_in.received("alice") == ["hello everyone", "only bob", *lines]
        assert carol_in.received("alice") == ["hello everyone", *lines]
        assert bob.send_data("hi alice", to=PeerId("alice")) == 1
        assert carol.send_data("héllo 👋") == 2
        await eventually(
            lambda: (
                alice_in.received("bob") == ["hi alice"]
                and alice_in.received("carol") == ["héllo 👋"]
                and bob_in.received("carol") == ["héllo 👋"]
            ),
            seconds(10),
            "the answers",
        )
        assert not any(isinstance(e, ev.DataDropped) for _, i in trio for e in i.events)


async def test_one_megabyte_both_ways(server: RunningServer) -> None:
    """Cut into 16 KiB frames and joined again: the same bytes, and text stays text."""
    rng = random.Random(7)
    to_bob, to_alice = rng.randbytes(1_000_000), rng.randbytes(1_048_577)
    text = "ü€😀" * 20_000  # 180 000 UTF-8 bytes, characters cut across frames
    async with data_agents(server.ws_url, ["alice", "bob"]) as ((alice, alice_in), (bob, bob_in)):
        assert alice.send_data(to_bob) == 1 and alice.send_data(text) == 1
        assert bob.send_data(bytearray(to_alice)) == 1
        await eventually(
            lambda: len(bob_in.received("alice")) == 2 and len(alice_in.received("bob")) == 1,
            seconds(15),
            "a megabyte each way",
        )
        got_bytes, got_text = bob_in.received("alice")
        assert isinstance(got_bytes, bytes) and got_bytes == to_bob
        assert isinstance(got_text, str) and got_text == text
        assert alice_in.received("bob") == [to_alice]
        with pytest.raises(MeshpeerError, match="over the 16777216-byte limit"):
            alice.send_data(bytes(16 * 1024 * 1024 + 1))


async def test_a_peer_leaving_mid_transfer(server: RunningServer) -> None:
    """Both halfway through 16 MiB when alice leaves: nothing raises or hangs, and bob
    reports what it lost both ways."""
    big = bytes(16 * 1024 * 1024)
    async with data_agents(server.ws_url, ["alice", "bob"]) as ((alice, alice_in), (bob, bob_in)):
        await eventually(lambda: bool(alice_in.opened("bob")), seconds(10), "the channel")
        alice.send_data(big)
        bob.send_data(big)
        await eventually(
            lambda: (
                channel_to(bob, "alice")._reassembler is not None
                and channel_to(bob, "alice")._reassembler.pending > 0
                and channel_to(alice, "bob")._reassembler is not None
                and channel_to(alice, "bob")._reassembler.pending > 0
            ),
            seconds(10),
            "both transfers under way",
        )
        await asyncio.wait_for(alice.leave(), seconds(10))
        await eventually(
            lambda: bool(bob_in.dropped("alice", incoming=True)) and bool(bob_in.dropped("alice")),
            seconds(10),
            "bob to report both messages lost",
        )
        (cut,) = bob_in.dropped("alice", incoming=True)
        assert "cut off" in cut.reason and 0 < cut.size < len(big)
        (unsent,) = bob_in.dropped("alice")
        assert unsent.size == len(big)
        assert bob_in.received("alice") == [] and alice_in.received("bob") == []
        assert alice_in.dropped("bob"), "alice reports her own unfinished message"
        await eventually(
            lambda: PeerId("alice") not in bob.links, seconds(5), "bob to close the link"
        )
        assert PeerId("alice") not in bob._data.meshpeer  # nothing kept for her
        assert bob.send_data("anyone?") == 0


async def test_messages_waiting_for_a_channel_are_bounded_and_expire(
    server: RunningServer,
) -> None:
    """A member that never answers (a bare signaling client): 64 messages wait for its
    channel, the rest are dropped at once, and the 64 when the wait is over."""
    async with clients(server.ws_url) as room:
        ghost = await room.join("ghost", "test")  # kept: a collected client disconnects
        limits = DataLimits(wait=1.0)
        async with data_agents(server.ws_url, ["alice"], data_limits=limits) as ((alice, inbox),):
            await eventually(lambda: PeerId("ghost") in alice.members, seconds(5), "the peer-list")
            sent_at = time.monotonic()
            queued = [alice.send_data(f"m{i}", to="ghost") for i in range(70)]
            assert queued == [1] * 64 + [0] * 6
            full = inbox.dropped("ghost")
            assert len(full) == 6 and all("queue is full" in d.reason for d in full)
            await eventually(
                lambda: len(inbox.dropped("ghost")) == 70, seconds(5), "the wait to end"
            )
            expired = inbox.dropped_at("ghost")[6:]
            assert all("no open channel within 1 s" in d.reason for _, d in expired)
            # The others waited their whole time (on the loop's clock, whatever the load).
            waited = min(t for t, _ in expired) - sent_at
            assert waited >= limits.wait, waited
            assert channel_to(alice, "ghost").queued == 0
        await ghost.ws.close()


async def test_a_stalled_peer_holds_up_nobody(server: RunningServer) -> None:
    """carol's process is stopped (SIGSTOP): alice's sends to everyone still reach bob at
    once; to carol at most the high-water mark sits in aiortc and 64 in the queue, the rest
    is dropped and reported."""
    carol = await asyncio.create_subprocess_exec(
        *join_command(server.ws_url, "carol", "--video", "none", "--audio", "none"),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with data_agents(server.ws_url, ["alice", "bob"]) as (
            (alice, alice_in),
            (_bob, bob_in),
        ):
            await eventually(
                lambda: bool(alice_in.opened("bob")) and bool(alice_in.opened("carol")),
                seconds(30),
                "alice's channels to bob and carol",
            )
            os.kill(carol.pid, signal.SIGSTOP)
            message = bytes(64 * 1024)
            counts: list[int] = []
            for round_ in range(1, 4):  # bob keeps up with each round; carol takes nothing
                counts.extend(alice.send_data(message) for _ in range(40))
                await eventually(
                    lambda: len(bob_in.received("alice")) == len(counts),
                    seconds(10),
                    f"round {round_}",
                )
            to_carol = channel_to(alice, "carol")
            assert to_carol.buffered_amount <= alice._data.limits.buffered
            assert to_carol.queued == 64
            dropped = alice_in.dropped("carol")
            assert dropped and all("queue is full" in d.reason for d in dropped)
            assert counts.count(1) == len(dropped) and counts.count(2) == 120 - len(dropped)
            assert alice_in.dropped("bob") == []
    finally:
        carol.kill()
        await carol.wait()


async def test_extra_channels_either_way(server: RunningServer) -> None:
    """An unreliable channel bob opens reaches alice under its own label; she answers on it."""
    async with data_agents(server.ws_url, ["alice", "bob"]) as ((_, alice_in), (bob, bob_in)):
        await eventually(lambda: PeerId("alice") in bob.links, seconds(10), "the connection")
        with pytest.raises(MeshpeerError, match="no connection to 'zed'"):
            bob.open_channel("zed", "telemetry")
        with pytest.raises(MeshpeerError, match="use send_data"):
            bob.open_channel("alice", MESHPEER)
        telemetry = bob.open_channel("alice", "telemetry", ordered=False, max_retransmits=0)
        assert telemetry.send("t1")  # queued until it opens
        with pytest.raises(MeshpeerError, match="at most 16384 bytes"):
            telemetry.send(bytes(16385))
        assert telemetry.send(bytes(16384))
        await eventually(
            lambda: len(alice_in.received("bob", "telemetry")) == 2,
            seconds(10),
            "telemetry at alice",
        )
        assert alice_in.received("bob", "telemetry") == ["t1", bytes(16384)]
        (theirs,) = alice_in.opened("bob", "telemetry")
        assert (theirs.ordered, theirs.max_retransmits) == (False, 0)
        assert theirs.send(b"pong")
        await eventually(
            lambda: bob_in.received("alice", "telemetry") == [b"pong"], seconds(10), "the answer"
        )
        assert alice_in.received("bob") == []  # nothing leaked onto the meshpeer channel
        telemetry.close()
        assert telemetry.closed and not telemetry.send("late")


async def test_a_replaced_connection_gets_a_new_channel(server: RunningServer) -> None:
    """alice calls bob again: the new connection opens its own meshpeer channel and what
    alice sends meanwhile goes on it."""
    async with data_agents(server.ws_url, ["alice", "bob"]) as ((alice, alice_in), (_, bob_in)):
        await eventually(lambda: bool(alice_in.opened("bob")), seconds(10), "the first channel")
        old = alice.links[PeerId("bob")]
        await alice.call(PeerId("bob"))
        assert alice.links[PeerId("bob")] is not old
        assert alice.send_data("after the call") == 1
        await eventually(
            lambda: bob_in.received("alice") == ["after the call"], seconds(10), "the message"
        )
        assert len(alice_in.opened("bob")) == 2 and len(bob_in.opened("alice")) == 2
        assert alice_in.dropped("bob") == []
