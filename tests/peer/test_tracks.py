"""Every remote track reaches the sinks with its identity: a peer's second video track
(a screen share, added by renegotiating in place) is its own tile, FirstFrame and
TrackReceived, between two real aiortc agents."""

from __future__ import annotations

from peer import events as ev
from peer.media.mosaic import Mosaic
from peer.media.synthetic import SyntheticVideoTrack
from signaling.protocol import PeerId
from tests.peer.helpers import SMALL, TrackFrames, agents, full_mesh_flowing
from tests.support import RunningServer, eventually, seconds

ALICE, BOB = PeerId("alice"), PeerId("bob")


async def test_a_second_video_track_is_its_own_tile_first_frame_and_track(
    server: RunningServer,
) -> None:
    mosaic = Mosaic()
    async with agents(server.ws_url, ["alice", "bob"]) as (alice, bob):
        events: list[ev.Event] = []
        alice.add_listener(events.append)
        await eventually(lambda: full_mesh_flowing([alice, bob], 5), seconds(15), "video flowing")
        counts = TrackFrames()
        alice.sinks.add(counts)  # added while bob's camera and tone are live
        alice.sinks.add(mosaic)
        assert {(t.peer, t.kind, t.index) for t in counts.started} == {
            (BOB, "video", 0),
            (BOB, "audio", 0),
        }
        screen = SyntheticVideoTrack("screen", width=SMALL.width, height=SMALL.height, fps=15)
        try:
            assert await bob.add_track(ALICE, screen)
            await eventually(
                lambda: all(counts.video_from(BOB).get(i, 0) >= 10 for i in (0, 1)),
                seconds(10),
                "frames of both of bob's video tracks at alice's sinks",
            )
        finally:
            screen.stop()
        received = [e.track for e in events if isinstance(e, ev.TrackReceived)]
        second = [t for t in received if t.kind == "video" and t.index == 1]
        assert [t.peer for t in second] == [BOB]
        assert second[0] in counts.frames  # the object TrackReceived carries is the key
        assert len(counts.started) == 3
        firsts = [e for e in events if isinstance(e, ev.FirstFrame) and e.track is second[0]]
        assert len(firsts) == 1 and firsts[0].kind == "video"
        assert mosaic.labels() == ["bob", "bob (2)"]
        assert mosaic.render().shape[1] == 2 * mosaic.tile[0]  # two tiles side by side
        alice.sinks.remove(counts)
        alice.sinks.remove(mosaic)
