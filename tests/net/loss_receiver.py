"""A receive-only agent that measures what it decodes from "sender", for test_loss.py.

``python -m tests.net.loss_receiver URL ROOM ID SECONDS [--pli-on-loss]`` (cwd: the
repository) joins, waits until video from "sender" flows, prints ``{"ready": true}``,
waits for a line on stdin (the test sets up the loss meanwhile), measures for SECONDS and
prints one JSON line: decoded video frames and keyframes in the window (when decoded and
their capture times), the largest gap between decoded frames, the RTP packets received
and lost per stream (audio, video, and the video retransmissions: rtx), the NACKs and
PLIs it sent (and when the NACKs went), and the candidate pair in use. It leaves LINGER
seconds later and exits 0.

``--pli-on-loss``: a PLI goes with every NACK (aiortc's receiver asks for a keyframe only
when its jitter buffer overflows or the decoder fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import av
from aiortc import RTCRtpReceiver

from peer.agent import Agent
from peer.events import RemoteTrack
from signaling.protocol import PeerId
from tests.keyframes import Keyframes, label_vp8_keyframes
from tests.peer.helpers import largest_gap
from tests.support import eventually, seconds

SENDER = "sender"
#: Seconds connected after the window, so the sender's samples (every 0.5 s) cover it.
LINGER = 1.0
#: RTCP feedback sent by this process's receivers: "pli", "nack".
sent: Counter[str] = Counter()
#: When each NACK went (time.monotonic()) and how many packets it asked for again: a
#: freeze that ends at a NACK asking for 2+ was a retransmission lost too.
nacks: list[tuple[float, int]] = []


@contextlib.contextmanager
def count_feedback(pli_on_loss: bool) -> Iterator[None]:
    """Count the PLIs and NACKs sent; with ``pli_on_loss``, a PLI goes with every NACK."""
    pli, nack = RTCRtpReceiver._send_rtcp_pli, RTCRtpReceiver._send_rtcp_nack

    async def send_pli(self: RTCRtpReceiver, media_ssrc: int) -> None:
        sent["pli"] += 1
        await pli(self, media_ssrc)

    async def send_nack(self: RTCRtpReceiver, media_ssrc: int, lost: list[int]) -> None:
        sent["nack"] += 1
        nacks.append((time.monotonic(), len(lost)))
        await nack(self, media_ssrc, lost)
        if pli_on_loss:
            await self._send_rtcp_pli(media_ssrc)

    RTCRtpReceiver._send_rtcp_pli = send_pli  # type: ignore[method-assign]
    RTCRtpReceiver._send_rtcp_nack = send_nack  # type: ignore[method-assign]
    try:
        yield
    finally:
        RTCRtpReceiver._send_rtcp_pli = pli  # type: ignore[method-assign]
        RTCRtpReceiver._send_rtcp_nack = nack  # type: ignore[method-assign]


class Pictures(Keyframes):
    """``Keyframes``, plus the capture time at the sender (pts, seconds) of each keyframe:
    their spacing as the encoder made them, whatever the network and decoding added."""

    def __init__(self) -> None:
        super().__init__()
        self.key_pts: list[tuple[float, float]] = []  # (decoded at, pts)

    def put_frame(self, track: RemoteTrack, frame: object) -> None:
        before = len(self.keys.get(str(track.peer), ()))
        super().put_frame(track, frame)
        keys = self.keys.get(str(track.peer), [])
        if len(keys) > before:  # this frame was a keyframe
            assert isinstance(frame, av.VideoFrame)
            assert frame.pts is not None and frame.time_base is not None
            self.key_pts.append((keys[-1], float(frame.pts * frame.time_base)))


def rtp_counts(agent: Agent) -> Counter[str]:
    """Packets received and lost per stream kind (audio, video, rtx) from the sender.

    Read from aiortc's receivers, not getStats(): aiortc gives every stream of one receiver
    the same stats id, so its report keeps one of them (the RTX stream once there is one).
    """
    counts: Counter[str] = Counter()
    for transceiver in agent.links[PeerId(SENDER)].pc.getTransceivers():
        receiver: Any = transceiver.receiver
        rtx = receiver._RTCRtpReceiver__rtx_ssrc
        for ssrc, stream in receiver._RTCRtpReceiver__remote_streams.items():
            name = "rtx" if ssrc in rtx else transceiver.kind
            counts[f"{name}_received"] += stream.packets_received
            counts[f"{name}_lost"] += stream.packets_lost
    return counts


async def measure(url: str, room: str, peer_id: str, window: float) -> dict[str, Any]:
    seen = Pictures()
    agent = Agent(url, room=room, peer_id=peer_id, consumers=[seen], stats_interval=None)
    await agent.join()
    try:
        await eventually(
            lambda: len(seen.frames.get(SENDER, [])) >= 30, seconds(30), "video from sender"
        )
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        before, feedback_before = rtp_counts(agent), sent.copy()
        start, started_unix = time.monotonic(), time.time()
        await asyncio.sleep(window)
        end, ended_unix = time.monotonic(), time.time()
        after = rtp_counts(agent)
        mine = next(s for s in await agent.stats() if s.peer == SENDER)
        route = mine.route
        await asyncio.sleep(LINGER)
    finally:
        await agent.leave()
    frames = [t for t in seen.frames.get(SENDER, []) if start <= t <= end]
    keys = [t for t in seen.keys.get(SENDER, []) if start <= t <= end]
    gaps = list(zip([start, *frames], [*frames, end], strict=True))
    gap_at = max(gaps, key=lambda pair: pair[1] - pair[0])[0]  # where the largest gap began
    return {
        "peer": peer_id,
        "route": route,
        "window": round(end - start, 3),
        "unix": [round(started_unix, 3), round(ended_unix, 3)],
        "frames": len(frames),
        "fps": round(len(frames) / (end - start), 1),
        "largest_gap": round(largest_gap(frames, start, end), 3),
        "gap_at": round(gap_at - start, 2),
        "keyframes": len(keys),
        "keyframe_at": [round(t - start, 2) for t in keys],
        "keyframe_pts": [round(pts, 3) for t, pts in seen.key_pts if start <= t <= end],
        "nacks_at": [(round(t - start, 2), n) for t, n in nacks if start <= t <= end],
        "keyframes_total": len(seen.keys.get(SENDER, [])),
        "packets": {key: after[key] - before[key] for key in sorted(after)},
        # The agent's own figure (stats lines, --stats-json) against aiortc's per stream.
        "agent_lost": mine.packets_lost,
        "media_lost": after["video_lost"] + after["audio_lost"],
        "feedback": {key: sent[key] - feedback_before[key] for key in sorted(sent)},
    }


def main(argv: list[str]) -> int:
    pli_on_loss = "--pli-on-loss" in argv
    url, room, peer_id, window = [arg for arg in argv if arg != "--pli-on-loss"]
    with label_vp8_keyframes(), count_feedback(pli_on_loss):
        result = asyncio.run(measure(url, room, peer_id, float(window)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
