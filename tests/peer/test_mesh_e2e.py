"""Real aiortc agents on loopback through a real signaling server (iceServers=[])."""

from __future__ import annotations

import asyncio
import logging

import pytest

from peer import events as ev
from peer.agent import Agent
from peer.link import PeerLink
from peer.mesh import LinkState
from signaling.protocol import PeerId
from tests.peer.helpers import TrackFrames, agents, frames_from, full_mesh_flowing, small_media
from tests.support import RunningServer, eventually, seconds

pytestmark = pytest.mark.slow


def _other_tasks() -> set[asyncio.Task[object]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current}


async def test_three_agents_full_mesh_then_one_leaves(server: RunningServer) -> None:
    seen: list[ev.Event] = []
    async with agents(server.ws_url, ["alice", "bob", "carol"]) as (alice, bob, carol):
        alice.add_listener(seen.append)
        await eventually(
            lambda: full_mesh_flowing([alice, bob, carol]), seconds(15), "video in all 6 directions"
        )
        await eventually(
            lambda: all(
                frames_from(a, b.peer_id, "audio") > 0
                for a in (alice, bob, carol)
                for b in (alice, bob, carol)
                if a is not b
            ),
            seconds(5),
            "audio in all directions",
        )
        for agent in (alice, bob, carol):
            assert set(agent.connection_states().values()) == {LinkState.CONNECTED}
            assert len(agent.links) == 2
        stats = {s.peer: s for s in await bob.stats()}
        assert set(stats) == {"alice", "carol"}
        assert stats[PeerId("alice")].frames_in > 0
        # Loopback, no ICE servers: straight between host candidates.
        assert {s.route for s in stats.values()} <= {"host-host", "host-prflx", "prflx-host"}
        assert all(s.route and "relay" not in s.route for s in stats.values())

        carol_tasks = {t for t in _other_tasks() if "carol" in t.get_name()}
        assert carol_tasks, "the taps of carol's tracks run as named tasks"
        await carol.leave()
        await eventually(
            lambda: "carol" not in alice.links and "carol" not in bob.links,
            seconds(10),
            "the others to close carol's connection",
        )
        await eventually(
            lambda: all(t.done() for t in carol_tasks), seconds(5), "carol's tasks to end"
        )
        assert not any("carol" in t.get_name() for t in _other_tasks())
        assert PeerId("carol") not in alice.members
        # the remaining pair keeps flowing
        before = frames_from(alice, "bob")
        await eventually(
            lambda: frames_from(alice, "bob") > before + 5,
            seconds(5),
            "alice <- bob after carol left",
        )

    kinds = {type(e) for e in seen}
    assert {ev.PeerLeft, ev.ConnectionStateChanged} <= kinds
    assert ev.PeerLeft(PeerId("carol")) in seen
    # nothing is left running once everyone left and the sources stopped
    await eventually(lambda: not _other_tasks(), seconds(5), "every task to end")


async def test_event_stream_and_remote_track_copy(server: RunningServer) -> None:
    """The documented bot loop: events() yields joins, tracks and first frames."""
    async with agents(server.ws_url, ["alice"]):
        bob_media = small_media("bob")
        bob = Agent(server.ws_url, room="test", peer_id="bob", media=bob_media, stats_interval=0.5)
        await bob.join()
        try:
            wanted = {ev.Joined, ev.TrackReceived, ev.FirstFrame, ev.StatsReport}
            got: dict[type, ev.Event] = {}

            async def consume() -> None:
                async for event in bob.events():
                    got.setdefault(type(event), event)
                    if wanted <= set(got):
                        return

            await asyncio.wait_for(consume(), 10)
            track_event = got[ev.TrackReceived]
            assert isinstance(track_event, ev.TrackReceived) and track_event.peer == "alice"
            copy = track_event.track.subscribe()
            frame = await asyncio.wait_for(copy.recv(), 5)
            assert frame is not None
            copy.stop()
            first = got[ev.FirstFrame]
            assert isinstance(first, ev.FirstFrame) and 0 < first.seconds < 10
        finally:
            await bob.leave()
            bob_media.stop()
        # the stream ends after leave()
        assert [e async for e in bob.events() if isinstance(e, ev.Failed)] == []


def fingerprints(sdp: str | None) -> set[str]:
    """The DTLS certificate fingerprints an SDP names: which RTCPeerConnection made it."""
    assert sdp is not None
    found = {line for line in sdp.splitlines() if line.startswith("a=fingerprint:")}
    assert found, sdp
    return found


async def test_glare_resolves_to_one_working_connection(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Both sides offer at the same moment: the offers cross, the higher ID (bob) ignores
    alice's, the lower ID yields and answers bob's; one connection carries media."""
    caplog.set_level(logging.INFO, logger="peer.negotiation")
    async with agents(server.ws_url, ["alice", "bob"]) as (alice, bob):
        await eventually(
            lambda: full_mesh_flowing([alice, bob]), seconds(10), "the first connection"
        )
        old = alice.links[PeerId("bob")]
        await asyncio.gather(alice.call(PeerId("bob")), bob.call(PeerId("alice")))
        await eventually(
            lambda: (
                alice.links.get(PeerId("bob")) not in (None, old)
                and alice.connection_states().get(PeerId("bob")) == LinkState.CONNECTED
                and bob.connection_states().get(PeerId("alice")) == LinkState.CONNECTED
            ),
            seconds(10),
            "a new connection after glare",
        )
        # The offers crossed: each side had its own out when the other's came.
        said = [r.getMessage() for r in caplog.records if r.name == "peer.negotiation"]
        assert "glare with alice: we are not polite, ignoring its offer" in said, said  # bob
        assert "glare with bob: we are polite, dropping our offer" in said, said  # alice
        # bob (higher ID) kept its offer: both ends are bob's offer, one connection.
        to_alice, to_bob = bob.links[PeerId("alice")], alice.links[PeerId("bob")]
        assert to_alice.role == "offerer" and to_bob.role == "answerer"
        assert fingerprints(to_bob.remote_sdp) == fingerprints(to_alice.pc.localDescription.sdp)
        assert fingerprints(to_alice.remote_sdp) == fingerprints(to_bob.pc.localDescription.sdp)
        assert len(alice.links) == len(bob.links) == 1
        assert old.state is LinkState.CLOSED
        await eventually(
            lambda: full_mesh_flowing([alice, bob], 3), seconds(10), "media after glare"
        )


async def test_receive_only_agent_offers_and_answers(server: RunningServer) -> None:
    """media=None: as the offerer it asks for audio and video; as the answerer it sends nothing."""
    async with agents(server.ws_url, ["alice"]) as (alice,):
        viewer = Agent(server.ws_url, room="test", peer_id="viewer")
        await viewer.join()
        try:
            async with agents(server.ws_url, ["bob"]) as (bob,):
                await eventually(
                    lambda: all(
                        frames_from(viewer, p, kind) > 0
                        for p in ("alice", "bob")
                        for kind in ("video", "audio")
                    ),
                    seconds(10),
                    "audio and video from both senders",
                )
                assert viewer.links[PeerId("alice")].role == "offerer"
                assert viewer.links[PeerId("bob")].role == "answerer"
                assert frames_from(alice, "viewer") == 0 and frames_from(bob, "viewer") == 0
        finally:
            await viewer.leave()


def _report_failed(link: PeerLink) -> None:
    """aiortc reports a dead path as failed only after ~30 s of consent checks: inject it."""
    link.pc._RTCPeerConnection__connectionState = "failed"  # type: ignore[attr-defined]
    link.pc.emit("connectionstatechange")


async def test_failed_connection_is_offered_again_by_its_offerer(server: RunningServer) -> None:
    async with agents(server.ws_url, ["alice", "bob"]) as (alice, bob):
        await eventually(
            lambda: full_mesh_flowing([alice, bob]), seconds(10), "the first connection"
        )
        offerer_link = bob.links[PeerId("alice")]  # bob came second: bob offered
        answerer_link = alice.links[PeerId("bob")]
        assert offerer_link.role == "offerer"
        # the answering side's failure alone: it closes its half and waits for a new offer
        _report_failed(answerer_link)
        await eventually(
            lambda: alice.links.get(PeerId("bob")) is not answerer_link, seconds(5), "close"
        )
        _report_failed(offerer_link)
        await eventually(
            lambda: (
                bob.links.get(PeerId("alice")) not in (None, offerer_link)
                and alice.links.get(PeerId("bob")) is not None
                and alice.connection_states().get(PeerId("bob")) == LinkState.CONNECTED
            ),
            seconds(10),
            "bob's new offer to connect them again",
        )
        assert bob.links[PeerId("alice")].role == "offerer"
        await eventually(lambda: full_mesh_flowing([alice, bob], 3), seconds(10), "media again")


def _directions(agent: Agent, peer: str) -> set[str | None]:
    return {t.currentDirection for t in agent.links[PeerId(peer)].pc.getTransceivers()}


async def _rtp_packets_in(agent: Agent, peer: str) -> int:
    report = await agent.links[PeerId(peer)].pc.getStats()
    return sum(int(s.packetsReceived) for s in report.values() if s.type == "inbound-rtp")


async def test_send_only_agents_are_sent_nothing(server: RunningServer) -> None:
    """receive=False: everyone gets its media, as offerer and as answerer; no one sends it
    any (its m-lines are sendonly, the others' recvonly), and two of them send each other
    nothing at all (inactive), though connected."""
    viewer = Agent(server.ws_url, room="test", peer_id="viewer")
    await viewer.join()
    try:
        async with (
            agents(server.ws_url, ["cast1"], receive=False) as (cast1,),
            agents(server.ws_url, ["alice"]) as (alice,),
            agents(server.ws_url, ["cast2"], receive=False) as (cast2,),
        ):
            await eventually(
                lambda: (
                    all(
                        frames_from(viewer, p, kind) > 0
                        for p in ("cast1", "alice", "cast2")
                        for kind in ("video", "audio")
                    )
                    and all(frames_from(alice, p) > 0 for p in ("cast1", "cast2"))
                    and cast2.links[PeerId("cast1")].state is LinkState.CONNECTED
                ),
                seconds(15),
                "everyone's media at the viewer, the casters' at alice",
            )
            await asyncio.sleep(1)  # media would have flowed by now
            assert alice.links[PeerId("cast1")].role == "offerer"  # cast1 answered
            assert cast2.links[PeerId("alice")].role == "offerer"
            for cast in (cast1, cast2):
                for peer in cast.links:
                    assert cast.links[peer].taps == [], (cast.peer_id, peer)
                    assert await _rtp_packets_in(cast, peer) == 0, (cast.peer_id, peer)
                assert _directions(cast, "viewer") == {"sendonly"}
                assert _directions(cast, "alice") == {"sendonly"}
                assert _directions(alice, cast.peer_id) == {"recvonly"}
            assert _directions(cast1, "cast2") == {"inactive"}
            assert _directions(cast2, "cast1") == {"inactive"}
    finally:
        await viewer.leave()


async def test_send_only_agent_takes_no_consumers(server: RunningServer) -> None:
    with pytest.raises(ValueError, match="send-only"):
        Agent(server.ws_url, receive=False, consumers=[TrackFrames()])
