"""The aiortc details meshpeer leans on, all of them behind :mod:`peer._aiortc`, pinned
between two real RTCPeerConnections on loopback: an aiortc upgrade that changes one of
them fails here, by name.

Shared encoding (peer.media.fanout):
- ``negotiated_codecs``: a transceiver's negotiated codecs are there when its sender
  first reads;
- ``put_encoder``/``encoder_slot``: the sender keeps the encoder we put in its private
  slot and packs our packets with it;
- ``on_keyframe_request``: an RTCP PLI reaches our callback (the shared encoder's);
- an RTCP REMB sets ``target_bitrate`` on the encoder in that slot.

Inbound stats (peer.link): ``inbound_counts`` reads a receiver's per-SSRC counters and
which SSRCs are retransmissions (getStats gives all of them one id); ``nominated_route``
reads the ICE pair aioice nominated.

mDNS (peer.link): ``mdns_on_this_loop`` resets aioice's responder (``aioice.ice._mdns``:
``lock``, ``protocol``, ``subscribers``), bound to the first event loop that resolves a name.

NACKs asked again (peer.nack):
- ``nack_generator``: a video receiver's NACK generator keeps the missing sequence
  numbers in ``missing``;
- ``replace_nack_sender``: the receiver's ``(ssrc, lost)`` NACK sender, which the sender
  answers, can be replaced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aioice.ice import get_or_create_mdns_protocol, unref_mdns_protocol
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from peer._aiortc import (
    InboundCounts,
    encoder_slot,
    inbound_counts,
    mdns_on_this_loop,
    nack_generator,
    negotiated_codecs,
    nominated_route,
)
from peer.media.encoder_group import EncoderGroup
from peer.media.fanout import EncodedTrack, Publisher, SenderPort
from peer.media.synthetic import SyntheticVideoTrack
from peer.nack import NackRepeater
from tests.support import eventually, seconds

pytestmark = pytest.mark.slow


class Pair:
    def __init__(self, publisher: Publisher, sender: RTCRtpSender, receiver: RTCRtpReceiver):
        self.publisher = publisher
        self.sender = sender
        self.receiver = receiver
        self.frames = 0

    @property
    def group(self) -> EncoderGroup:
        track = self.sender.track
        assert isinstance(track, EncodedTrack)
        assert track._group is not None, "the track never bound to a group"
        return track._group


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """A synthetic source sent as an EncodedTrack from one connection to another."""
    source = SyntheticVideoTrack("pin", width=160, height=120, fps=30)
    publisher = Publisher(source)
    config = RTCConfiguration(iceServers=[])
    offerer, answerer = RTCPeerConnection(config), RTCPeerConnection(config)
    track = publisher.track()
    assert isinstance(track, EncodedTrack)
    sender = offerer.addTrack(track)
    track.attach(next(t for t in offerer.getTransceivers() if t.sender is sender))
    received: list[RTCRtpReceiver] = []
    pair_holder: list[Pair] = []
    readers: list[asyncio.Task[None]] = []

    @answerer.on("track")
    def on_track(remote: object) -> None:
        async def read() -> None:
            while True:
                await remote.recv()  # type: ignore[attr-defined]
                if pair_holder:
                    pair_holder[0].frames += 1

        readers.append(asyncio.ensure_future(read()))

    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)
    received.extend(t.receiver for t in answerer.getTransceivers())
    pair = Pair(publisher, sender, received[0])
    pair_holder.append(pair)
    try:
        yield pair
    finally:
        for reader in readers:
            reader.cancel()
        await offerer.close()
        await answerer.close()
        publisher.close()
        source.stop()


async def test_negotiated_codecs_and_the_encoder_slot(pair: Pair) -> None:
    await eventually(lambda: pair.frames >= 10, seconds(15), "frames through the pack path")
    transceiver = pair.sender.track._transceiver  # type: ignore[union-attr]
    assert transceiver is not None
    codecs = negotiated_codecs(transceiver)
    assert codecs and codecs[0].mimeType.lower() == "video/vp8"
    slot = encoder_slot(pair.sender)
    assert isinstance(slot, SenderPort), f"aiortc replaced the sender's encoder with {slot!r}"
    assert pair.group.stats()[0].frames >= 10


async def test_pli_reaches_the_shared_encoder(pair: Pair) -> None:
    await eventually(lambda: pair.frames >= 5, seconds(15), "frames")
    before = pair.group.stats()[0].keyframe_requests
    ssrc = pair.receiver.getSynchronizationSources()[0].source
    assert ssrc == pair.sender._ssrc
    await pair.receiver._send_rtcp_pli(ssrc)
    await eventually(
        lambda: pair.group.stats()[0].keyframe_requests > before, seconds(5), "the PLI at the group"
    )


async def test_remb_reaches_the_shared_encoder(pair: Pair) -> None:
    await eventually(lambda: pair.frames >= 5, seconds(15), "frames")
    group = pair.group
    restarts = group.stats()[0].restarts
    remb = RtcpPsfbPacket(
        fmt=RTCP_PSFB_APP,
        ssrc=1,
        media_ssrc=0,
        fci=pack_remb_fci(300_000, [pair.sender._ssrc]),
    )
    await pair.receiver._send_rtcp(remb)
    await eventually(
        lambda: group.stats()[0].bitrate == 300_000, seconds(5), "the REMB estimate applied"
    )
    await eventually(
        lambda: group.stats()[0].restarts == restarts + 1, seconds(5), "one encoder restart"
    )
    # Estimates that move less than 25% change nothing (no keyframe each time).
    for bps in (320_000, 280_000, 310_000):
        remb.fci = pack_remb_fci(bps, [pair.sender._ssrc])
        await pair.receiver._send_rtcp(remb)
    await asyncio.sleep(0.5)
    assert group.stats()[0].bitrate == 300_000
    assert group.stats()[0].restarts == restarts + 1


async def test_nacks_are_asked_again_while_a_packet_is_missing(pair: Pair) -> None:
    await eventually(lambda: pair.frames >= 5, seconds(15), "frames")
    generator = nack_generator(pair.receiver)
    assert generator is not None
    assert isinstance(generator.missing, set)
    ssrc = pair.sender._ssrc
    repeater = NackRepeater(pair.receiver)
    try:
        # A packet the sender still has: its retransmission arrives, nothing is asked again.
        lost = (generator.max_seq - 3) % 65536
        generator.missing.add(lost)
        await pair.receiver._send_rtcp_nack(ssrc, [lost])  # as aiortc does on a gap
        await eventually(lambda: lost not in generator.missing, seconds(5), "the retransmission")
        await asyncio.sleep(0.3)
        assert repeater.repeats == 0

        # One whose retransmission never comes: asked again every 0.1 s, then given up.
        lost = (generator.max_seq - 3) % 65536
        pair.sender._RTCRtpSender__rtp_history.clear()  # type: ignore[attr-defined]
        generator.missing.add(lost)
        await pair.receiver._send_rtcp_nack(ssrc, [lost])
        await eventually(lambda: repeater.repeats >= 3, seconds(5), "the NACK asked again")
        await asyncio.sleep(1.2)  # past GIVE_UP_AFTER
        repeats = repeater.repeats
        assert repeats <= 11
        await asyncio.sleep(0.3)
        assert repeater.repeats == repeats
    finally:
        repeater.stop()


async def test_per_stream_counters_of_a_receiver(pair: Pair) -> None:
    await eventually(lambda: pair.frames >= 5, seconds(15), "frames")
    streams = pair.receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
    rtx = pair.receiver._RTCRtpReceiver__rtx_ssrc  # type: ignore[attr-defined]
    assert isinstance(rtx, dict)
    media = streams[pair.sender._ssrc]
    assert media.packets_received >= 5 and media.packets_lost == 0
    assert all(ssrc in rtx for ssrc in streams if ssrc != pair.sender._ssrc)
    # What inbound_counts makes of them: the media stream's, retransmissions left out.
    assert inbound_counts(pair.receiver) == InboundCounts(media.packets_received, 0)


async def test_the_nominated_pair(pair: Pair) -> None:
    await eventually(lambda: pair.frames >= 5, seconds(15), "frames")
    transceiver = pair.sender.track._transceiver  # type: ignore[union-attr]
    assert transceiver is not None
    assert nominated_route(transceiver) == "host-host"


def test_aioice_mdns_responder_works_again_on_a_second_event_loop() -> None:
    """Two loops, one after the other, each with users contending for aioice's responder:
    without mdns_on_this_loop the second fails ("bound to a different event loop")."""

    async def contend() -> None:
        mdns_on_this_loop()
        users = [object() for _ in range(3)]
        protocols = await asyncio.gather(*(get_or_create_mdns_protocol(u) for u in users))
        assert len({id(p) for p in protocols}) == 1
        for user in users:
            await unref_mdns_protocol(user)

    for _ in range(2):
        asyncio.run(contend())
