"""Stats arithmetic and the bounded event queue, without aiortc."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

import pytest

from peer import events as ev
from peer.agent import Agent
from peer.events import EventHub, EventQueue
from peer.mesh import LinkState
from peer.stats import Counters, PeerStats, counters_from_report, rates
from signaling.protocol import PeerId


@dataclass
class Entry:
    type: str
    bytesSent: int = 0
    bytesReceived: int = 0
    packetsReceived: int = 0
    packetsLost: int = 0
    roundTripTime: float | None = None


def test_counters_sum_the_report() -> None:
    report = [
        Entry("transport", bytesSent=1000, bytesReceived=2000),
        Entry("inbound-rtp", packetsReceived=50, packetsLost=2),
        Entry("inbound-rtp", packetsReceived=70, packetsLost=-1),  # RTCP may report negative loss
        Entry("remote-inbound-rtp", packetsLost=3, roundTripTime=0.004),
        Entry("remote-inbound-rtp", packetsLost=1, roundTripTime=0.010),
        Entry("outbound-rtp"),
    ]
    c = counters_from_report(report, at=5.0)
    assert c == Counters(5.0, 1000, 2000, 120, 2, 4, 0.010)


def test_rates() -> None:
    first = Counters(10.0, bytes_sent=0, bytes_received=0)
    second = Counters(12.0, bytes_sent=250_000, bytes_received=500_000)
    assert rates(None, first) == (0.0, 0.0)
    assert rates(first, second) == pytest.approx((2000.0, 1000.0))
    assert rates(second, second) == (0.0, 0.0)


def test_peer_stats_json_and_line() -> None:
    s = PeerStats(PeerId("bob"), LinkState.CONNECTED, 3.2, 600, 650, 29.9, 300, 500, 1, 0, 0.11)
    assert s.to_json()["state"] == "connected"
    assert s.line() == "bob connected 3ms in 600/out 650 kbps 29.9fps lost 1"
    relayed = PeerStats(PeerId("b"), LinkState.CONNECTED, None, 1, 2, 3.0, 4, 5, 0, 0, None)
    assert "via TURN" not in relayed.line()
    relayed = replace(relayed, route="relay-host")
    assert relayed.line().startswith("b connected via TURN ")
    assert relayed.to_json()["route"] == "relay-host"


async def test_event_queue_drops_oldest_when_full() -> None:
    queue = EventQueue(maxsize=3)
    for n in range(5):
        queue.put(ev.PeerJoined(PeerId(f"p{n}")))
    assert queue.dropped == 2 and len(queue) == 3
    queue.close()
    got = [e async for e in queue]
    assert got == [ev.PeerJoined(PeerId(f"p{n}")) for n in (2, 3, 4)]


async def test_event_queue_wakes_a_waiting_consumer() -> None:
    queue = EventQueue()
    waiter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put(ev.PeerLeft(PeerId("x")))
    assert await asyncio.wait_for(waiter, 1) == ev.PeerLeft(PeerId("x"))
    queue.close()
    assert await queue.get() is None


def test_event_queue_needs_room() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EventQueue(0)


async def test_a_hub_without_a_stream_keeps_nothing_and_still_calls_listeners() -> None:
    """``meshpeer join`` only listens: a stream no one read kept its last 256 events, stats
    reports of every peer among them (~1 KiB per peer per report under tracemalloc)."""
    heard: list[ev.Event] = []
    hub = EventHub(0)
    hub.add_listener(heard.append)
    for n in range(1000):
        hub.emit(ev.StatsReport(()) if n % 2 else ev.PeerJoined(PeerId(f"p{n}")))
    assert len(heard) == 1000
    assert len(hub.queue) == 0 and hub.queue.dropped == 0
    agent = Agent("ws://127.0.0.1:9/ws", room="r", peer_id="a", event_queue_size=0)
    with pytest.raises(RuntimeError, match="no event stream"):
        agent.events()
    assert agent.dropped_events == 0


async def test_a_second_reader_is_refused_and_close_ends_the_first() -> None:
    """Each event goes to one reader: a second concurrent iterator would silently get
    nothing and never end (issue 8), so it is refused with a clear error."""
    queue = EventQueue()

    async def read_all() -> list[ev.Event]:
        return [e async for e in queue]

    first = asyncio.ensure_future(read_all())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="add_listener"):
        await asyncio.wait_for(read_all(), 1)
    with pytest.raises(RuntimeError, match="already has a reader"):
        await asyncio.wait_for(queue.get(), 1)
    queue.put(ev.PeerLeft(PeerId("x")))
    queue.close()
    assert await asyncio.wait_for(first, 1) == [ev.PeerLeft(PeerId("x"))]
    assert [e async for e in queue] == []  # a reader after the first ended is fine
