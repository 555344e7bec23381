"""Per remote peer statistics: counters from ``RTCPeerConnection.getStats()`` and the taps,
turned into rates between two samples.

Pure: it reads the report entries by their ``type`` and field names (duck typing), so it
is tested with plain objects and does not import aiortc.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from peer.mesh import LinkState
from signaling.protocol import PeerId


@dataclass(frozen=True)
class Counters:
    """Totals at one instant, from one getStats() report."""

    at: float  # time.monotonic()
    bytes_sent: int = 0
    bytes_received: int = 0
    packets_received: int = 0
    packets_lost: int = 0  # of what the peer sends us (our inbound RTP)
    remote_packets_lost: int = 0  # of what we send, as the peer reports it (RTCP)
    rtt: float | None = None  # seconds, from the peer's receiver reports


def counters_from_report(entries: Iterable[Any], at: float) -> Counters:
    """Sum the transport and RTP stream entries of a getStats() report."""
    sent = received = packets = lost = remote_lost = 0
    rtts: list[float] = []
    for entry in entries:
        kind = getattr(entry, "type", None)
        if kind == "transport":
            sent += int(entry.bytesSent)
            received += int(entry.bytesReceived)
        elif kind == "inbound-rtp":
            packets += int(entry.packetsReceived)
            lost += max(0, int(entry.packetsLost))
        elif kind == "remote-inbound-rtp":
            remote_lost += max(0, int(entry.packetsLost))
            rtt = getattr(entry, "roundTripTime", None)
            if rtt is not None:
                rtts.append(float(rtt))
    return Counters(at, sent, received, packets, lost, remote_lost, max(rtts) if rtts else None)


@dataclass(frozen=True)
class TrackStats:
    """One remote track: frames received (encoded, whole), frames decoded, and whether it
    is being decoded now (only while a consumer wants pictures: peer.media.encoded);
    ``decoded_dropped``: decoded frames dropped because the reader was behind."""

    kind: str
    index: int
    frames: int
    decoded: int
    decoding: bool
    decoded_dropped: int = 0


@dataclass(frozen=True)
class PeerStats:
    """One remote peer as seen from this agent. Rates are over the last sampling interval."""

    peer: PeerId
    state: LinkState
    rtt_ms: float | None
    kbps_in: float
    kbps_out: float
    fps_in: float  # video frames per second received from this peer (decoded or not)
    frames_in: int  # video frames received from this peer, total (decoded or not)
    audio_frames_in: int
    packets_lost: int  # of the peer's packets to us, total
    remote_packets_lost: int  # of our packets to the peer, as it reports
    first_frame_s: float | None  # seconds from our join to its first video frame
    #: Negotiation milestones of this connection (created, local-description,
    #: remote-description, connected, first-video-frame), seconds since our join.
    steps: tuple[tuple[str, float], ...] = ()
    role: str = ""  # "offerer" or "answerer": who made this connection's offer
    #: Candidate types of the pair in use, local-remote: "host-host", "relay-host" (through
    #: our TURN relay), "srflx-prflx" ...; "" until ICE has chosen.
    route: str = ""
    #: Remote candidates refused (over peer.candidates' bounds): only a broken or hostile
    #: peer sends that many.
    candidates_dropped: int = 0
    #: Every remote track of this connection, in arrival order.
    tracks: tuple[TrackStats, ...] = ()

    @property
    def decoders(self) -> int:
        """Tracks of this peer being decoded now."""
        return sum(track.decoding for track in self.tracks)

    def to_json(self) -> dict[str, Any]:
        """One ``--stats-json`` entry: the fields, with enums as their names."""
        data = asdict(self)
        data["state"] = str(self.state)
        data["role"] = str(self.role)
        data["steps"] = dict(self.steps)
        data["decoders"] = self.decoders
        return data

    def line(self) -> str:
        """Compact status text: ``bob connected 12ms 640/610kbps 30.0fps lost 0``."""
        rtt = f"{self.rtt_ms:.0f}ms" if self.rtt_ms is not None else "-ms"
        via = " via TURN" if "relay" in self.route else ""
        return (
            f"{self.peer} {self.state}{via} {rtt} in {self.kbps_in:.0f}/out "
            f"{self.kbps_out:.0f} kbps {self.fps_in:.1f}fps lost {self.packets_lost}"
        )


def rates(previous: Counters | None, now: Counters) -> tuple[float, float]:
    """(kbps in, kbps out) between two samples; 0 for the first one."""
    if previous is None or now.at <= previous.at:
        return 0.0, 0.0
    seconds = now.at - previous.at
    kbps_in = max(0, now.bytes_received - previous.bytes_received) * 8 / 1000 / seconds
    kbps_out = max(0, now.bytes_sent - previous.bytes_sent) * 8 / 1000 / seconds
    return kbps_in, kbps_out


#: Bitrates are measured over at least this many seconds between two stats samples.
MIN_RATE_INTERVAL = 0.5


@dataclass
class Sampler:
    """The rates of one connection between its stats samples: a sample too close to the
    previous one (under :data:`MIN_RATE_INTERVAL`) repeats the previous rates."""

    previous: Counters | None = None
    last: tuple[float, float] = (0.0, 0.0)

    def rates(self, counters: Counters) -> tuple[float, float]:
        """(kbps in, kbps out) since the previous sample."""
        if self.previous is not None and counters.at - self.previous.at < MIN_RATE_INTERVAL:
            return self.last
        self.last = rates(self.previous, counters)
        self.previous = counters
        return self.last


async def report_every(
    interval: float,
    sample: Callable[[], Awaitable[Sequence[PeerStats]]],
    report: Callable[[tuple[PeerStats, ...]], None],
) -> None:
    """The stats loop: ``report(sample())`` every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        report(tuple(await sample()))
