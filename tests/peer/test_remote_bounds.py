"""A remote peer that sends far more candidates than any real one, over real signaling: the
agent keeps its bounds (peer.candidates) and the connection keeps working."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from peer.agent import Agent
from peer.candidates import MAX_MDNS_RESOLVING, MAX_REMOTE_CANDIDATES
from peer.link import PeerLink
from peer.media.synthetic import SyntheticVideoTrack
from peer.mesh import LinkState
from peer.signaling_client import SignalingClient
from signaling.protocol import (
    Answer,
    Candidate,
    IceCandidate,
    Message,
    Offer,
    PeerId,
    RoomId,
)
from signaling.server import ServerConfig
from signaling.session import Limits
from tests.peer.helpers import frames_from, small_media
from tests.support import eventually, running_server, seconds

pytestmark = pytest.mark.slow

#: How long aioice waits for an answer to an mDNS query (aioice.mdns, resolve()).
MDNS_TIMEOUT = 1.0
#: The flood is the agent's to bound, not the server's: its rate limit is lifted here.
UNLIMITED = ServerConfig(limits=Limits(rate=100_000, burst=10_000))


@dataclass
class Remote:
    """A peer that trickles like a browser: an aiortc connection whose answer carries no
    end-of-candidates, so the agent keeps taking candidates after it."""

    client: SignalingClient

    async def candidate(self, text: str) -> None:
        ice = IceCandidate(text, "0", 0, None)
        sent = await self.client.send(Candidate("candidate", None, PeerId("agent"), "", ice))
        assert sent, "the signaling socket is down"


@asynccontextmanager
async def agent_and_remote() -> AsyncIterator[tuple[Agent, Remote]]:
    """The agent connected to ``mallory`` (who sends it video), both in room ``test``."""
    async with running_server(UNLIMITED) as server:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        source = SyntheticVideoTrack("mallory", width=160, height=120, fps=15)
        tasks: set[asyncio.Task[None]] = set()
        readers: list[asyncio.Task[None]] = []

        @pc.on("track")
        def drain(track: MediaStreamTrack) -> None:  # an unread track grows without end
            async def read() -> None:
                while True:
                    await track.recv()

            readers.append(asyncio.ensure_future(read()))

        async def answer(offer: Offer) -> None:
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            pc.addTrack(source)
            await pc.setLocalDescription(await pc.createAnswer())
            sdp = pc.localDescription.sdp.replace("a=end-of-candidates\r\n", "")
            await client.send(Answer("answer", None, offer.sender, "", sdp))

        def on_message(message: Message) -> None:
            if isinstance(message, Offer):
                task = asyncio.ensure_future(answer(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        client = SignalingClient(
            server.ws_url,
            PeerId("mallory"),
            RoomId("test"),
            on_message=on_message,
            on_joined=lambda peer_list, rejoin: None,
            on_lost=lambda code: None,
        )
        await client.connect()
        media = small_media("agent")
        agent = Agent(server.ws_url, room="test", peer_id="agent", media=media)
        try:
            await agent.join()
            await eventually(
                lambda: frames_from(agent, "mallory") >= 5, seconds(20), "mallory's video"
            )
            yield agent, Remote(client)
        finally:
            await agent.leave()
            media.stop()
            for reader in readers:
                reader.cancel()
            await client.close()
            await pc.close()
            source.stop()


def link_to_mallory(agent: Agent) -> PeerLink:
    link = agent.links.get(PeerId("mallory"))
    assert link is not None, "no connection to mallory"
    return link


def remote_candidates(link: PeerLink) -> int:
    """Remote candidates aiortc holds for ``link`` (one ICE transport: BUNDLE); learned
    peer-reflexive ones left out, they never came from the remote's messages."""
    transport = link.pc.getTransceivers()[0].receiver.transport.transport
    return sum(1 for c in transport.getRemoteCandidates() if c.type != "prflx")


async def still_working(agent: Agent, link: PeerLink) -> None:
    before = frames_from(agent, "mallory")
    await eventually(
        lambda: frames_from(agent, "mallory") >= before + 10, seconds(10), "more video"
    )
    assert link.state is LinkState.CONNECTED
    assert agent.links.get(PeerId("mallory")) is link


async def test_a_thousand_candidates_keep_128_and_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="peer.link")
    async with agent_and_remote() as (agent, remote):
        link = link_to_mallory(agent)
        in_answer = remote_candidates(link)  # the answer's own, already taken
        assert 0 < in_answer < 10
        sent = 0
        for _ in range(10):  # batches that the agent's per-peer backlog (256) takes whole
            for _ in range(100):
                port = 20_000 + sent
                await remote.candidate(
                    f"candidate:{sent} 1 udp 2122260223 127.0.0.1 {port} typ host"
                )
                sent += 1
            expected = in_answer + sent
            await eventually(
                lambda: remote_candidates(link) + link.candidates_dropped >= expected,  # noqa: B023
                seconds(10),
                f"the agent handling {sent} candidates",
            )
        held = remote_candidates(link)
        print(f"\ncandidates: {sent} sent, {held} held, {link.candidates_dropped} dropped")
        assert held == MAX_REMOTE_CANDIDATES
        assert link.candidates_dropped == in_answer + sent - held
        stats = {s.peer: s for s in await agent.stats()}
        assert stats[PeerId("mallory")].candidates_dropped == link.candidates_dropped
        warnings = [r for r in caplog.records if "candidates" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        await still_working(agent, link)


async def test_mdns_names_resolve_a_few_at_a_time(caplog: pytest.LogCaptureFixture) -> None:
    """Each ``.local`` name costs a multicast query and up to 1 s: at most
    MAX_MDNS_RESOLVING at once, the rest dropped; later ones are taken again."""
    caplog.set_level(logging.WARNING, logger="peer.link")
    async with agent_and_remote() as (agent, remote):
        link = link_to_mallory(agent)
        burst = 20
        for index in range(burst):
            name = f"{index:08x}-6f1d-4c1e-9f55-2d0b5c3e4a71.local"
            await remote.candidate(
                f"candidate:{index} 1 udp 2113937151 {name} 5{index:04d} typ host"
            )
        # Seen before aioice gives the first names up (its own 1 s, not scaled): the burst
        # takes a few ms to arrive.
        deadline = time.monotonic() + MDNS_TIMEOUT
        seen = (link.mdns_resolving, link.candidates_dropped)
        while sum(seen) < burst:
            assert time.monotonic() < deadline, f"only {seen} (resolving, dropped)"
            await asyncio.sleep(0.01)
            seen = (link.mdns_resolving, link.candidates_dropped)
        print(f"\nmDNS: {burst} sent, (resolving, dropped) {seen}")
        assert seen == (MAX_MDNS_RESOLVING, burst - MAX_MDNS_RESOLVING)
        warnings = [r for r in caplog.records if "mDNS" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        await eventually(lambda: link.mdns_resolving == 0, seconds(5), "the resolutions to give up")
        name = "a2e1f8c3-4d5e-4f6a-8b7c-9d0e1f2a3b4c.local"
        await remote.candidate(f"candidate:99 1 udp 2113937151 {name} 57364 typ host")
        await eventually(lambda: link.mdns_resolving == 1, seconds(5), "a later name resolving")
        await still_working(agent, link)
