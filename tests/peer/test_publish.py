"""Tracks for the whole room (issue 18 item 5): ``Agent.publish`` sends a track to every
peer, present and future, through one shared encoder, and keeps it when a connection is
replaced; ``Agent.unpublish`` removes it in place. Real aiortc agents on loopback.

The published track is 320x240, the agents' own video 160x120 (``SMALL``): each receiver
reads every remote video track it is given (:class:`Received`) and tells them by size.
Figures are printed (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiortc.mediastreams import MediaStreamError

from peer import events as ev
from peer.agent import Agent
from peer.events import RemoteTrack
from peer.media.synthetic import SyntheticVideoTrack
from signaling.protocol import PeerId
from tests.peer.helpers import SMALL, agents, frames_from, full_mesh_flowing, largest_gap
from tests.support import RunningServer, eventually, seconds

ALICE, BOB, CAROL = PeerId("alice"), PeerId("bob"), PeerId("carol")
#: The published track's width; the agents' own video is SMALL (160 wide).
WIDE = 320
#: Issue 18: a bot that joins after the track was published receives it within 1 s of
#: its connection being up.
LATE_JOINER = 1.0
#: A replaced connection: offer, answer, ICE, DTLS, a keyframe (test_renegotiation_e2e).
MAX_REPLACED_GAP = 3.0


def published_track() -> SyntheticVideoTrack:
    return SyntheticVideoTrack("published", width=WIDE, height=240, fps=SMALL.fps)


class Received:
    """Every remote video track ``agent`` is given (:class:`peer.events.TrackReceived`),
    read from a copy of its own: the arrival time (``time.monotonic()``) of each frame,
    by sender and the track's width; and the IDs of the tracks that ended."""

    def __init__(self, agent: Agent) -> None:
        self.times: dict[tuple[PeerId, int], list[float]] = {}
        self.ids: dict[tuple[PeerId, int], set[str]] = {}
        self.ended: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        agent.add_listener(self._event)

    def _event(self, event: ev.Event) -> None:
        if isinstance(event, ev.TrackReceived) and event.kind == "video":
            task = asyncio.get_running_loop().create_task(self._read(event.track))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(event, ev.TrackEnded):
            self.ended[event.track_id] = time.monotonic()

    async def _read(self, remote: RemoteTrack) -> None:
        copy = remote.subscribe()
        try:
            while True:
                frame = await copy.recv()
                key = (remote.peer, int(frame.width))
                self.times.setdefault(key, []).append(time.monotonic())
                self.ids.setdefault(key, set()).add(remote.id)
        except MediaStreamError:
            pass

    def frames(self, sender: PeerId, width: int = WIDE, since: float = 0.0) -> list[float]:
        return [t for t in self.times.get((sender, width), []) if t >= since]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@asynccontextmanager
async def watching(*agents: Agent) -> AsyncIterator[list[Received]]:
    readers = [Received(agent) for agent in agents]
    try:
        yield readers
    finally:
        for reader in readers:
            await reader.close()


def video_encoders(agent: Agent) -> list[tuple[int, int]]:
    """(tier, members) of each shared video encoder ``agent`` runs."""
    return sorted((s.tier, s.members) for s in agent.encoder_stats() if s.kind == "video")


async def test_a_bot_joining_later_receives_the_published_track(server: RunningServer) -> None:
    """Alice publishes a second video track; bob joins 5 s later and offers (his offer has
    one video m-line, which alice's camera takes): alice answers, then offers the
    published track in place."""
    extra = published_track()
    try:
        async with agents(server.ws_url, ["alice"]) as (alice,):
            alice.publish(extra)
            alice.publish(extra)  # again: nothing more
            await asyncio.sleep(5)  # the scenario: bob comes 5 s after it was published
            async with agents(server.ws_url, ["bob"]) as (bob,), watching(bob) as (seen,):
                frames = await eventually(
                    lambda: len(seen.frames(ALICE)) >= 5 and seen.frames(ALICE),
                    seconds(10),
                    "bob receiving alice's published track",
                )
                link = bob.links[ALICE]
                assert link.connected_at is not None
                after_up = frames[0] - link.connected_at
                print(f"\npublished track at the late joiner {after_up:.3f} s after connected")
                assert after_up <= seconds(LATE_JOINER), after_up
                # her own camera too, on the same connection
                assert len(seen.frames(ALICE, SMALL.width)) > 0
                assert len(seen.ids[(ALICE, WIDE)]) == 1
                assert list(alice.links[BOB].published) == [extra]
    finally:
        extra.stop()


async def test_a_replaced_connection_carries_the_published_track(server: RunningServer) -> None:
    """Both ways of replacing: bob offers a new connection (alice answers, then offers the
    published track), then alice does (her first offer carries it)."""
    extra = published_track()
    try:
        async with agents(server.ws_url, ["alice"]) as (alice,):
            alice.publish(extra)
            async with agents(server.ws_url, ["bob"]) as (bob,), watching(bob) as (seen,):
                await eventually(
                    lambda: len(seen.frames(ALICE)) >= 5, seconds(10), "the published track"
                )
                measured: dict[str, float] = {}
                for caller, callee, name in (
                    (bob, ALICE, "bob calls"),
                    (alice, BOB, "alice calls"),
                ):
                    old = bob.links[ALICE]
                    start = time.monotonic()
                    await caller.call(callee)
                    await eventually(
                        lambda old=old, start=start: (  # type: ignore[misc]
                            bob.links.get(ALICE) not in (None, old)
                            and len(seen.frames(ALICE, since=start + 0.5)) >= 5
                        ),
                        seconds(10),
                        f"the published track on the new connection ({name})",
                    )
                    measured[name] = round(
                        largest_gap(seen.frames(ALICE), start, time.monotonic()), 3
                    )
                print(f"\npublished track across replaced connections, largest gaps: {measured}")
                assert max(measured.values()) < seconds(MAX_REPLACED_GAP), measured
                assert len(seen.ids[(ALICE, WIDE)]) == 3  # one track per connection
                assert list(alice.links[BOB].published) == [extra]
    finally:
        extra.stop()


async def test_publishing_to_two_peers_encodes_once(server: RunningServer) -> None:
    extra = published_track()
    try:
        async with (
            agents(server.ws_url, ["alice", "bob", "carol"]) as (alice, bob, carol),
            watching(bob, carol) as readers,
        ):
            await eventually(
                lambda: full_mesh_flowing([alice, bob, carol]), seconds(15), "full mesh"
            )
            assert video_encoders(alice) == [(0, 2)]
            links = dict(alice.links)
            start = time.monotonic()
            alice.publish(extra)
            await eventually(
                lambda: all(len(r.frames(ALICE)) >= 5 for r in readers),
                seconds(10),
                "bob and carol receiving the published track",
            )
            firsts = [round(r.frames(ALICE)[0] - start, 3) for r in readers]
            print(f"\npublished to two present peers: first frames after {firsts} s")
            # one encoder per source (her camera, the published track), two members each
            encoders = video_encoders(alice)
            assert [tier for tier, _ in encoders].count(0) == 2, encoders
            assert sum(members for _, members in encoders) == 4, encoders
            # renegotiated in place: the connections made before are still the ones
            assert dict(alice.links) == links
    finally:
        extra.stop()


async def test_unpublish_ends_the_track_at_every_peer(server: RunningServer) -> None:
    extra = published_track()
    try:
        async with (
            agents(server.ws_url, ["alice", "bob", "carol"]) as (alice, bob, carol),
            watching(bob, carol) as readers,
        ):
            alice.publish(extra)
            await eventually(
                lambda: all(len(r.frames(ALICE)) >= 5 for r in readers),
                seconds(15),
                "bob and carol receiving the published track",
            )
            copies = {peer: link.published[extra].id for peer, link in alice.links.items()}
            links = dict(alice.links)
            start = time.monotonic()
            alice.unpublish(extra)
            await eventually(
                lambda: all(
                    copies[p] in r.ended for p, r in zip((BOB, CAROL), readers, strict=True)
                ),
                seconds(10),
                "TrackEnded for the published track at bob and carol",
            )
            ended = [
                round(r.ended[copies[p]] - start, 3)
                for p, r in zip((BOB, CAROL), readers, strict=True)
            ]
            print(f"\nunpublished: TrackEnded after {ended} s")
            # its frames stop; alice's camera goes on, on the same connections
            counts = [len(r.frames(ALICE)) for r in readers]
            own = [frames_from(agent, "alice") for agent in (bob, carol)]
            await asyncio.sleep(seconds(1.0))  # a second of media to compare with
            assert [len(r.frames(ALICE)) for r in readers] == counts
            assert all(
                frames_from(a, "alice") > n + 5 for a, n in zip((bob, carol), own, strict=True)
            )
            assert dict(alice.links) == links
            # nobody sends it any more: its encoder is gone
            await eventually(
                lambda: video_encoders(alice) == [(0, 2)], seconds(5), "one video encoder"
            )
            assert all(not link.published for link in alice.links.values())
            with pytest.raises(ValueError, match="not published"):
                alice.unpublish(extra)
    finally:
        extra.stop()
