"""Stats collection for one connection: :class:`peer.stats.PeerStats` from its
``getStats()``, its taps and what :mod:`peer._aiortc` reads of aiortc's internals.

Apart from :mod:`peer.link` (which only connects) and from :mod:`peer.stats` (pure: the
counters, the rates and the reporting loop), because this is the one place that reads a
whole connection for figures.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from peer._aiortc import inbound_counts, nominated_route
from peer.stats import Counters, PeerStats, Sampler, TrackStats, counters_from_report

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

    from peer.link import PeerLink

log = logging.getLogger(__name__)


async def sample(link: PeerLink, sampler: Sampler, joined_at: float) -> PeerStats:
    """``link`` now; rates since ``sampler``'s previous sample of it."""
    now = time.monotonic()
    try:
        report: Any = await link.pc.getStats()
        counters = counters_from_report(report.values(), now)
        inbound = _inbound(link.pc)
        if inbound is not None:
            received, lost = inbound
            counters = dataclasses.replace(counters, packets_received=received, packets_lost=lost)
    except Exception as exc:  # a closing connection may fail half-way
        log.debug("getStats for %s failed: %s", link.remote, exc)
        counters = Counters(now)
    kbps_in, kbps_out = sampler.rates(counters)
    tracks = tuple(
        TrackStats(
            tap.kind, tap.remote.index, tap.frames, tap.decoded, tap.decoding, tap.decoded_dropped
        )
        for tap in link.received.taps
    )
    video, audio = link.received.tap("video"), link.received.tap("audio")
    first = video.first_frame_at if video is not None else None
    steps = dict(link.steps)
    if first is not None:
        steps["first-video-frame"] = first
    return PeerStats(
        peer=link.remote,
        state=link.state,
        rtt_ms=counters.rtt * 1000 if counters.rtt is not None else None,
        kbps_in=round(kbps_in, 1),
        kbps_out=round(kbps_out, 1),
        fps_in=round(video.fps, 1) if video is not None else 0.0,
        frames_in=video.frames if video is not None else 0,
        audio_frames_in=audio.frames if audio is not None else 0,
        packets_lost=counters.packets_lost,
        remote_packets_lost=counters.remote_packets_lost,
        first_frame_s=round(first - joined_at, 4) if first is not None else None,
        steps=tuple((name, round(at - joined_at, 4)) for name, at in steps.items()),
        role=str(link.role),
        route=route(link.pc),
        candidates_dropped=link.candidates_dropped,
        tracks=tracks,
    )


def _inbound(pc: RTCPeerConnection) -> tuple[int, int] | None:
    """(received, lost) RTP packets of the media streams we receive, retransmissions
    left out; None if aiortc's internals moved (getStats' figures are used then).

    aiortc's getStats gives every stream of one receiver the same id, so once
    retransmissions flow its report keeps the RTX stream's counts instead of the
    media's (tests/net/test_loss.py saw it; read through :mod:`peer._aiortc`).
    """
    received = lost = 0
    for transceiver in pc.getTransceivers():
        counts = inbound_counts(transceiver.receiver)
        if counts is None:
            return None
        received += counts.received
        lost += counts.lost
    return received, lost


def route(pc: RTCPeerConnection) -> str:
    """``"<local>-<remote>"`` candidate types of the pair carrying media (``relay-host``:
    we send through our TURN relay), or "" before ICE has chosen one.

    aiortc's stats have no candidate pairs, so this reads aioice's nominated pair
    (:func:`peer._aiortc.nominated_route`); tests/net pins it on a real relay.
    """
    for transceiver in pc.getTransceivers():
        found = nominated_route(transceiver)
        if found is not None:
            return found
    return ""
