"""Encoded frames out of aiortc's receiver (issue 19): a packet consumer gets the bytes the
sender's shared encoder made, from a keyframe; remote tracks are decoded only while a
consumer wants pictures. Real aiortc agents through a real server, on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from peer.agent import Agent
from peer.events import RemoteTrack
from peer.media.packets import EncodedFrame, PacketConsumer
from signaling.protocol import PeerId
from tests.peer.helpers import TrackFrames, agents, full_mesh_flowing, sent_video
from tests.support import RunningServer, eventually, seconds

ALICE, BOB = PeerId("alice"), PeerId("bob")


class Packets(PacketConsumer):
    """Every encoded frame, by track."""

    def __init__(self) -> None:
        self.got: dict[RemoteTrack, list[EncodedFrame]] = {}

    def put_packet(self, track: RemoteTrack, packet: EncodedFrame) -> None:
        self.got.setdefault(track, []).append(packet)

    def track_ended(self, track: RemoteTrack) -> None:
        pass

    def video(self, peer: PeerId) -> list[EncodedFrame]:
        return next((p for t, p in self.got.items() if t.peer == peer and t.kind == "video"), [])


def decoders(stats: list[Any]) -> int:
    return sum(s.decoders for s in stats)


async def test_a_packet_consumer_gets_the_senders_bytes_from_a_keyframe(
    server: RunningServer,
) -> None:
    async with agents(server.ws_url, ["alice", "bob"]) as (alice, bob):
        await eventually(lambda: full_mesh_flowing([alice, bob], 5), seconds(15), "video flowing")
        sent = sent_video(alice.links[BOB])
        await eventually(lambda: len(sent) >= 3, seconds(5), "alice sending")
        encoded = next(e for e in bob.links[ALICE].encoded.values() if e.kind == "video")
        requests = encoded.keyframe_requests
        packets = Packets()
        bob.sinks.add(packets)  # mid-stream: alice's encoder makes keyframes only when asked
        await eventually(lambda: len(packets.video(ALICE)) >= 45, seconds(10), "45 packets")
        got = list(packets.video(ALICE))
        first = got[0]
        assert first.keyframe and first.codec == "VP8" and first.clock_rate == 90000
        assert encoded.keyframe_requests > requests  # the PLI that made it
        assert not any(p.keyframe for p in got[1:10])
        start = sent.index(first.data)
        assert sent[start : start + len(got)] == [p.data for p in got]  # byte for byte
        stamps = [p.timestamp for p in got]
        assert stamps == sorted(stamps)
        interval = (stamps[-1] - stamps[0]) / 90000 / (len(got) - 1)
        assert 1 / 20 < interval < 1 / 10  # SMALL is 15 fps
        assert all(p.arrival >= first.arrival for p in got)


async def test_a_bot_decodes_only_while_something_wants_pictures(
    server: RunningServer,
) -> None:
    senders = ["a", "b", "c"]
    async with agents(server.ws_url, senders) as sending:
        packets = Packets()
        bot = Agent(server.ws_url, room="test", peer_id="rec", consumers=[packets])
        await bot.join()
        try:
            await eventually(
                lambda: all(len(packets.video(PeerId(p))) >= 10 for p in senders),
                seconds(15),
                "packets from the three senders",
            )
            stats = await bot.stats()
            assert len(stats) == 3 and decoders(stats) == 0
            assert all(
                t.decoded == t.decoded_dropped == 0 and t.frames >= 10
                for s in stats
                for t in s.tracks
            )
            assert all(s.fps_in > 0 and s.frames_in >= 10 for s in stats)
            for agent in sending:  # senders that show nothing decode nothing either
                assert decoders(await agent.stats()) == 0

            frames = TrackFrames()
            added = time.monotonic()
            bot.sinks.add(frames)
            await eventually(
                lambda: all(frames.video_from(PeerId(p)).get(0, 0) >= 1 for p in senders),
                seconds(1.5),
                "decoded frames from the three senders",
            )
            started = time.monotonic() - added
            stats = await bot.stats()
            assert decoders(stats) == 6  # video and audio of each
            assert started < seconds(1.5)
            for link in bot.links.values():
                for encoded in link.encoded.values():
                    assert encoded.losses == 0  # the decoder started at a keyframe
            print(f"decoding of 3 peers started within {started:.2f} s")

            bot.sinks.remove(frames)
            await eventually(
                lambda: _idle(bot),
                seconds(5),
                "decoding stopped",
            )
            decoded = _decoded(bot)
            await asyncio.sleep(0.5)
            assert _decoded(bot) == decoded

            # A copy of the decoded track (an echo, an analyser) is read: decoded meanwhile.
            copy = bot.subscribe(PeerId("a"), "video")
            assert copy is not None
            await asyncio.wait_for(copy.recv(), seconds(2))
            copy.stop()
            await eventually(lambda: _idle(bot), seconds(5), "decoding stopped again")
        finally:
            await bot.leave()


def _idle(bot: Agent) -> bool:
    return not any(e.decoding for link in bot.links.values() for e in link.encoded.values())


def _decoded(bot: Agent) -> int:
    return sum(tap.decoded for link in bot.links.values() for tap in link.taps)
