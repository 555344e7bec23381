"""Run by test_packet_recorder: records VP8 and Opus packets in real time until killed.

Prints ``recording`` once 3 s of packets were handed to the recorder, then goes on; the
test SIGKILLs it there, so nothing of the recorder's own finishing runs.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from peer.media.packets import EncodedFrame
from peer.media.recorder import Recorder
from signaling.protocol import PeerId
from tests.media.clips import opus_packets, remote, vp8_packets

SECONDS = 10


async def record(directory: Path) -> None:
    recorder = Recorder(directory)
    peer = PeerId("bob")
    video, audio = remote(peer, "video"), remote(peer, "audio")
    recorder.expect(peer, {"audio", "video"})
    recorder.track_started(video)
    recorder.track_started(audio)
    vp8 = vp8_packets(30 * SECONDS, keyframe_every=30)
    opus = opus_packets(50 * SECONDS)
    queued = sorted(
        [
            (i / 30, video, "VP8", bytes(p), i * 3000, 90_000, p.is_keyframe)
            for i, p in enumerate(vp8)
        ]
        + [(i / 50, audio, "opus", bytes(p), i * 960, 48_000, True) for i, p in enumerate(opus)],
        key=lambda item: item[0],
    )
    start = time.monotonic()
    told = False
    for at, track, codec, data, timestamp, rate, key in queued:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        recorder.put_packet(
            track, EncodedFrame(codec, data, timestamp, rate, key, time.monotonic())
        )
        if not told and at >= 3.0:
            told = True
            print("recording", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(record(Path(sys.argv[1])))
