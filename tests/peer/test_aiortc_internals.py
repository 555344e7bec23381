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

Encoded frames, decoding on demand (peer.media.encoded):
- ``feed_decoder``: at the ``track`` event the receiver's decoder thread has not started,
  so it reads the queue we put in ``__decoder_queue``; every whole frame is put there as
  ``(codec, JitterFrame)`` in order, timestamps mapped to start at 0; ``None`` on stop;
- ``bound_decoded``: the decoder thread hands each decoded frame to the loop through
  ``put`` of the remote track's ``_queue``, called on its own thread, and the track reads
  it with ``get``: a held-up loop keeps at most the bound's frames alive;
- ``watch_pli``/``media_ssrcs``: the receiver's own PLI (the jitter buffer's
  ``pli_flag``) goes through ``_send_rtcp_pli``, to a media SSRC of ``__remote_streams``.

Audio delay (peer.media.encoded):
- ``pass_audio_through``: an audio receiver's ``__jitter_buffer`` is aiortc's
  ``JitterBuffer``, which holds each Opus frame until four newer ones came; the receiver
  takes what ``add`` returns from the object put there, so with ``AudioPassThrough`` each
  frame goes on with its own packet.

The receive path's per-packet cost (peer.link), ``lighten_receive_path``:
- aiortc reads the time of each received packet through ``aiortc.clock.current_ms`` and
  ``current_datetime``, looked up on the module for each call;
- aioice hands each datagram of a host pair to ``StunProtocol.datagram_received``, and
  the connection's ``_queue`` is only ever given ``put_nowait`` and awaited with ``get``;
- ``OveruseEstimator.update_min_frame_period`` is the least of the last 60 deltas.

Lip sync (peer.media.encoded):
- ``watch_sender_reports``: the sender's RTCP SRs reach the receiver's
  ``_handle_rtcp_packet``, looked up on the instance for each packet;
- ``rtp_origin``: ``__timestamp_mapper._origin`` is the RTP timestamp of the first frame,
  which the frames' timestamps count from.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aioice.ice import StunProtocol, get_or_create_mdns_protocol, unref_mdns_protocol
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, clock
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from aiortc.rate import OveruseEstimator
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, pack_remb_fci

from peer._aiortc import (
    AudioPassThrough,
    DatagramQueue,
    DecodedFrames,
    DecoderFeed,
    InboundCounts,
    bound_decoded,
    encoder_slot,
    feed_decoder,
    inbound_counts,
    lighten_receive_path,
    mdns_on_this_loop,
    media_ssrcs,
    nack_generator,
    negotiated_codecs,
    nominated_route,
    pass_audio_through,
    rtp_origin,
    watch_pli,
    watch_sender_reports,
)
from peer.media.encoder_group import EncoderGroup
from peer.media.fanout import EncodedTrack, Publisher, SenderPort
from peer.media.packets import is_keyframe
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
        self.ended = False

    @property
    def group(self) -> EncoderGroup:
        track = self.sender.track
        assert isinstance(track, EncodedTrack)
        assert track._group is not None, "the track never bound to a group"
        return track._group


@asynccontextmanager
async def connected_pair(
    on_track: Callable[[RTCRtpReceiver], None] | None = None,
) -> AsyncIterator[Pair]:
    """A synthetic source sent as an EncodedTrack from one connection to another; the
    remote track is read (``Pair.frames``); ``on_track`` sees the receiver at its track
    event."""
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
    def on_track_event(remote: object) -> None:
        if on_track is not None:
            on_track(next(t.receiver for t in answerer.getTransceivers()))

        async def read() -> None:
            try:
                while True:
                    await remote.recv()  # type: ignore[attr-defined]
                    if pair_holder:
                        pair_holder[0].frames += 1
            except MediaStreamError:
                if pair_holder:
                    pair_holder[0].ended = True

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


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    async with connected_pair() as connected:
        yield connected


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


async def test_encoded_frames_come_through_the_decoder_queue() -> None:
    """At the track event the decoder thread has not started; from then on every whole
    frame reaches our feed, in order, and the track decodes only what the feed passes on;
    the receiver stopping puts None through it, and the track ends."""
    got: list[tuple[RTCRtpCodecParameters, JitterFrame]] = []
    stopped: list[bool] = []
    decode = [False]
    feeds: list[DecoderFeed] = []

    def on_frame(codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        got.append((codec, frame))
        if decode[0] or (is_keyframe(codec.name, frame.data) and len(got) > 30):
            decode[0] = True
            feeds[0].decode(codec, frame)

    def on_track(receiver: RTCRtpReceiver) -> None:
        assert receiver._RTCRtpReceiver__decoder_thread is None  # type: ignore[attr-defined]
        feeds.append(feed_decoder(receiver, on_frame, lambda: stopped.append(True)))

    async with connected_pair(on_track) as pair:
        await eventually(lambda: len(got) >= 30, seconds(15), "encoded frames at the feed")
        assert pair.frames == 0  # nothing decoded: the decoder thread reads our feed
        codec, first = got[0]
        assert codec.name == "VP8" and codec.clockRate == 90000
        assert first.timestamp == 0  # mapped by aiortc: 0 at the first frame
        assert is_keyframe("VP8", first.data)
        stamps = [frame.timestamp for _, frame in got]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        # A keyframe on request (the receiver's PLI to the first media SSRC), then decoding.
        assert media_ssrcs(pair.receiver) == [pair.sender._ssrc]
        await pair.receiver._send_rtcp_pli(pair.sender._ssrc)
        await eventually(lambda: pair.frames >= 5, seconds(10), "decoded frames")
        assert feeds[0].backlog < 30
        await pair.receiver.stop()
        assert stopped == [True]
        await eventually(lambda: pair.ended, seconds(5), "the track ended")


def hold_the_loop_until(done: Callable[[], bool], timeout: float) -> None:
    """Block the event loop (as a loaded machine does) until ``done()``: threads go on."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "still not done with the loop held up"
        time.sleep(0.01)


async def test_decoded_frames_waiting_for_the_reader_are_bounded() -> None:
    """A loop held up while the decoder works through a backlog: of 30 frames decoded
    meanwhile, ``bound_decoded``'s 3 wait for the reader and 27 are dropped on the decoder
    thread (aiortc would keep all 30, and FFmpeg's picture pool as many buffers for good);
    once the loop runs, the reader gets those 3, then new frames again."""
    got: list[tuple[RTCRtpCodecParameters, JitterFrame]] = []
    feeds: list[DecoderFeed] = []
    bounds: list[DecodedFrames] = []

    def on_frame(codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
        if got or is_keyframe(codec.name, frame.data):
            got.append((codec, frame))

    def on_track(receiver: RTCRtpReceiver) -> None:
        feeds.append(feed_decoder(receiver, on_frame, lambda: None))
        bounds.append(bound_decoded(receiver, 3))

    async with connected_pair(on_track) as pair:
        await eventually(lambda: len(got) >= 31, seconds(15), "encoded frames from a keyframe")
        assert pair.frames == 0
        bound = bounds[0]
        for codec, frame in got[:30]:
            feeds[0].decode(codec, frame)
        hold_the_loop_until(lambda: bound.waiting + bound.dropped >= 30, seconds(10))
        assert (bound.waiting, bound.dropped) == (3, 27)
        await eventually(lambda: pair.frames == 3, seconds(5), "the 3 kept frames read")
        assert bound.waiting == 0
        feeds[0].decode(*got[30])
        await eventually(lambda: pair.frames == 4, seconds(5), "a new frame read")
        assert bound.dropped == 27


async def test_the_receivers_own_keyframe_requests_are_heard(pair: Pair) -> None:
    """A jump the jitter buffer cannot take (its ``pli_flag``) makes the receiver send a
    PLI through ``_send_rtcp_pli``: ``watch_pli`` hears it; ours through the original
    sender are not heard, and reach the sender's encoder all the same."""
    await eventually(lambda: pair.frames >= 5, seconds(15), "frames")
    heard: list[bool] = []
    send_pli = watch_pli(pair.receiver, lambda: heard.append(True))
    group = pair.group
    before = group.stats()[0].keyframe_requests
    await send_pli(pair.sender._ssrc)
    await eventually(
        lambda: group.stats()[0].keyframe_requests > before, seconds(5), "our PLI at the group"
    )
    assert heard == []
    generator = nack_generator(pair.receiver)
    assert generator is not None and generator.max_seq is not None
    transceiver = pair.sender.track._transceiver  # type: ignore[union-attr]
    assert transceiver is not None
    stale = RtpPacket(
        payload_type=negotiated_codecs(transceiver)[0].payloadType,
        sequence_number=(generator.max_seq - 1000) % 65536,  # far behind: a reset
        timestamp=0,
        ssrc=pair.sender._ssrc,
        payload=b"\x10" + bytes(10),
    )
    await pair.receiver._handle_rtp_packet(stale, arrival_time_ms=0)
    assert heard, "the jitter buffer's pli_flag did not go through _send_rtcp_pli"


async def test_sender_reports_and_the_rtp_origin() -> None:
    """Each SR the sender sends (every 0.5-1.5 s) reaches ``watch_sender_reports`` with its
    NTP and RTP timestamps; ``rtp_origin`` plus a frame's mapped timestamp is its RTP
    timestamp; an SR's pair is one the sender really sent (RTP ahead of the first frame,
    NTP near now)."""
    reports: list[tuple[int, int]] = []
    got: list[JitterFrame] = []
    origins: list[int | None] = []

    def on_track(receiver: RTCRtpReceiver) -> None:
        watch_sender_reports(receiver, lambda ntp, rtp: reports.append((ntp, rtp)))
        origins.append(rtp_origin(receiver))

        def on_frame(codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
            got.append(frame)
            origins.append(rtp_origin(receiver))

        feed_decoder(receiver, on_frame, lambda: None)

    async with connected_pair(on_track):
        await eventually(lambda: len(reports) >= 2, seconds(10), "two sender reports")
    assert origins[0] is None  # before the first frame
    origin = origins[1]
    assert origin is not None and set(origins[1:]) == {origin}
    ntp, rtp = reports[-1]
    ahead = (rtp - origin) % 2**32
    assert 0 < ahead < 90_000 * 15 and ahead - got[-1].timestamp < 90_000
    assert abs(ntp / 2**32 - 2_208_988_800 - time.time()) < 5  # NTP epoch 1900


async def test_an_audio_frame_goes_on_with_its_own_packet() -> None:
    """aiortc's audio jitter buffer hands an Opus frame on once four newer packets came
    (80 ms); with ``pass_audio_through(receiver)`` at the track event (as ``EncodedTap``),
    with its own packet. Two audio tracks, the second one passed through."""
    #: per receiver, per frame at the feed: how many frames newer the newest packet is
    lags: dict[int, list[int]] = {0: [], 1: []}
    config = RTCConfiguration(iceServers=[])
    offerer, answerer = RTCPeerConnection(config), RTCPeerConnection(config)
    offerer.addTrack(AudioStreamTrack())  # aiortc's silence, its own Opus encoder
    offerer.addTrack(AudioStreamTrack())

    def watch(index: int, receiver: RTCRtpReceiver) -> None:
        newest: list[int] = []
        handle = receiver._handle_rtp_packet

        async def seen(packet: RtpPacket, arrival_time_ms: int) -> None:
            newest.append(packet.timestamp)
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = seen  # type: ignore[method-assign]

        def on_frame(codec: RTCRtpCodecParameters, frame: JitterFrame) -> None:
            origin = rtp_origin(receiver)
            assert origin is not None
            lags[index].append(((newest[-1] - origin) % 2**32 - frame.timestamp) // 960)

        feed_decoder(receiver, on_frame, lambda: None)
        if index == 1:
            pass_audio_through(receiver)

    @answerer.on("track")
    def on_track(remote: object) -> None:
        receivers = [t.receiver for t in answerer.getTransceivers()]
        index = next(i for i, r in enumerate(receivers) if r.track is remote)
        watch(index, receivers[index])

    try:
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)
        await eventually(
            lambda: min(len(v) for v in lags.values()) >= 10, seconds(15), "audio frames"
        )
        assert set(lags[0]) == {4}, lags[0]
        assert set(lags[1]) == {0}, lags[1]
    finally:
        await offerer.close()
        await answerer.close()


def _packet(number: int) -> RtpPacket:
    return RtpPacket(payload_type=111, sequence_number=number % 65536, timestamp=number * 960)


@pytest.mark.parametrize(
    ("numbers", "passed"),
    [
        ([1, 2, 3], [1, 2, 3]),
        ([1, 3, 2, 4], [1, 3, 4]),  # late: the one after it went on already
        ([1, 2, 2, 3], [1, 2, 3]),  # repeated
        ([65534, 65535, 65536, 65537], [65534, 65535, 65536, 65537]),  # wraps
        ([5000, 5001, 10, 11], [5000, 5001, 10, 11]),  # far back: numbering restarted
    ],
)
def test_audio_passes_through_in_order(numbers: list[int], passed: list[int]) -> None:
    passing = AudioPassThrough()
    out = [passing.add(_packet(n)) for n in numbers]
    assert all(not pli for pli, _ in out)
    assert [f.timestamp // 960 for _, f in out if f is not None] == passed
    assert passing.late == len(numbers) - len(passed)


# -- the receive path's per-packet cost ----------------------------------------------------


async def test_the_lighter_receive_path_carries_the_media() -> None:
    """With ``lighten_receive_path`` every datagram of the pair goes through our
    ``DatagramQueue``, aiortc stamps packets with our clock, and frames flow."""
    lighten_receive_path()
    stamps = [0]
    current_ms = clock.current_ms

    def counting_ms() -> int:
        stamps[0] += 1
        return current_ms()

    clock.current_ms = counting_ms
    try:
        async with connected_pair() as pair:
            await eventually(lambda: pair.frames >= 5, seconds(15), "frames")
            ice = pair.receiver.transport.transport  # RTCDtlsTransport -> RTCIceTransport
            connection = ice._connection
            queue = connection._queue
            assert isinstance(queue, DatagramQueue)
            nominated = list(connection._nominated.values())
            assert nominated and isinstance(nominated[0].protocol, StunProtocol)
            passed = [0]
            put = queue.put_nowait

            def counting_put(item: tuple[bytes, int] | None) -> None:
                passed[0] += 1
                put(item)

            queue.put_nowait = counting_put  # type: ignore[method-assign]
            before, stamped = pair.frames, stamps[0]
            await eventually(lambda: pair.frames >= before + 10, seconds(15), "more frames")
            assert passed[0] >= 10 and queue.dropped == 0
            assert stamps[0] > stamped  # aiortc read our clock for the packets
    finally:
        clock.current_ms = current_ms


def test_the_lighter_clock_tells_the_same_time() -> None:
    lighten_receive_path()
    ntp_epoch = datetime.datetime(1900, 1, 1, tzinfo=datetime.UTC)
    reference = int((datetime.datetime.now(datetime.UTC) - ntp_epoch).total_seconds() * 1000)
    assert 0 <= clock.current_ms() - reference <= 50
    assert clock.current_datetime().tzinfo is datetime.UTC
    assert abs(clock.current_datetime().timestamp() - time.time()) < 0.05


def test_the_least_recent_frame_period_is_of_the_last_60() -> None:
    lighten_receive_path()
    estimator, rng, deltas = OveruseEstimator(), random.Random(1), []
    for _ in range(300):
        deltas.append(rng.choice([rng.uniform(1, 100), 33.3, 0.0]))
        assert estimator.update_min_frame_period(deltas[-1]) == min(deltas[-60:])
    assert estimator.ts_delta_hist == deltas[-60:]


async def test_datagrams_waiting_are_bounded_and_none_always_goes_through() -> None:
    queue = DatagramQueue(limit=3)
    for n in range(5):
        queue.put_nowait((bytes([n]), 1))
    queue.put_nowait(None)
    assert queue.dropped == 2 and queue.qsize() == 4
    assert [await queue.get() for _ in range(4)] == [(b"\x00", 1), (b"\x01", 1), (b"\x02", 1), None]
    # A waiting reader is woken; one cancelled while waiting leaves the queue usable.
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait((b"x", 1))
    assert await waiting == (b"x", 1)
    cancelled = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    queue.put_nowait((b"y", 1))
    assert await asyncio.wait_for(queue.get(), 1) == (b"y", 1)
