"""Fan-outs (peer-joined, peer-left, broadcasts) in large rooms: written over several event-loop
passes, behind direct frames, coalesced per member, and still in the order the server decided.

The server writes a room's fan-out a few members per pass (signaling.connection.Flusher); these
tests shrink that budget to one member per pass, so that every fan-out is still pending while
the next join, relayed message or departure comes in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import signaling.connection
from signaling.connection import Flusher
from tests.signaling.clients import Peer, clients
from tests.signaling.conftest import ServerFactory


@pytest.fixture
def one_member_per_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signaling.connection, "FANOUT_MIN_SECONDS", 0.0)
    monkeypatch.setattr(signaling.connection, "FANOUT_SHARE", 0.0)


@pytest.mark.usefixtures("one_member_per_pass")
async def test_join_storm_in_a_large_room_keeps_every_ordering_guarantee(
    make_server: ServerFactory,
) -> None:
    names = [f"p{i:02d}" for i in range(40)]
    # send_queue 8: fan-outs waiting 2 deep are written like direct frames (never near 8).
    async with (
        make_server(max_peers=len(names), send_queue=8) as srv,
        clients(srv.ws_url) as opened,
    ):
        joined: list[Peer] = []
        for name in names:
            peer = await opened.join(name)  # its first frame is the peer-list
            assert peer.peers == [p.name for p in joined]
            # An offer right after the peer-list, to everyone in it: each must already know
            # the joiner (section 4.2.1), though its peer-joined may still wait for its write.
            for earlier in joined:
                await peer.send(type="offer", to=earlier.name, sdp=f"from {name}")
            joined.append(peer)
        last = joined[-1]
        await last.send(type="chat", text="everyone")
        for i, peer in enumerate(joined[:-1]):
            later = names[i + 1 :]
            frames = [await peer.recv() for _ in range(2 * len(later) + 1)]
            kinds = [f["type"] for f in frames]
            # Every join it was told of, in join order; each joiner's offer after its join.
            told = [f["peerId"] for f in frames if f["type"] == "peer-joined"]
            assert told == later, peer.name
            for name in later:
                offer = {"type": "offer", "to": peer.name, "sdp": f"from {name}", "from": name}
                assert frames.count(offer) == 1, (peer.name, name)
                joined_at = frames.index({"type": "peer-joined", "peerId": name})
                assert joined_at < frames.index(offer), (peer.name, name)
            assert kinds.count("chat") == 1
            chat_at = kinds.index("chat")
            assert frames[chat_at] == {"type": "chat", "text": "everyone", "from": last.name}
            assert chat_at > frames.index({"type": "peer-joined", "peerId": last.name})
        # Half of the room leaves at once: exactly one peer-left each, to each who stays.
        leaving, staying = joined[::2], joined[1::2]
        await asyncio.gather(*(peer.ws.close() for peer in leaving))
        for peer in staying:
            got = [await peer.recv() for _ in leaving]
            assert sorted(f["peerId"] for f in got) == sorted(p.name for p in leaving)
            assert all(f["type"] == "peer-left" for f in got)
        await staying[0].send(type="fence")
        for peer in staying[1:]:
            assert await peer.recv() == {"type": "fence", "from": staying[0].name}
        metrics = srv.server.metrics
        assert metrics.slow_clients_dropped_total == 0
        assert metrics.leaves["slow"] == 0


class Recorder:
    """What Flusher needs of a connection: its flags, its loop and a flush."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self._direct = False
        self._in_fanout = False
        self._loop = asyncio.get_running_loop()

    def _flush(self) -> None:
        self.log.append(self.name)


async def passes(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.usefixtures("one_member_per_pass")
async def test_direct_frames_go_out_in_the_next_pass_ahead_of_a_pending_fan_out() -> None:
    log: list[str] = []
    flusher = Flusher()
    members = [Recorder(f"m{i}", log) for i in range(5)]
    direct = Recorder("direct", log)
    conns: Any = members  # duck-typed connections
    for conn in conns:
        conn._in_fanout = True
        flusher.fanout(conn)
    one: Any = direct
    one._direct = True
    flusher.direct(one)
    await passes(1)
    assert log == ["direct", "m0"]
    one._direct = True
    flusher.direct(one)  # pushed while the fan-out is under way
    await passes(1)
    assert log == ["direct", "m0", "direct", "m1"]
    await passes(5)
    assert log == ["direct", "m0", "direct", "m1", "m2", "m3", "m4"]
    assert not any(m._in_fanout or m._direct for m in members)


async def test_a_fan_out_frame_is_encoded_once() -> None:
    flusher = Flusher()
    text = '{"type":"peer-joined","peerId":"bob"}'
    first = flusher.frame(text)
    assert flusher.frame(text) is first
    assert first == signaling.connection.text_frame(text)
    other = flusher.frame('{"type":"peer-left","peerId":"bob"}')
    assert other != first
