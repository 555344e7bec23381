"""Run by test_recorder: records synthetic tracks until SIGINT, never calling close().

The files must still be finalised: that is the Recorder's own at-exit duty.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from peer.events import RemoteTrack
from peer.media.recorder import Recorder
from peer.media.synthetic import SyntheticVideoTrack, ToneAudioTrack
from peer.media.tap import TrackTap
from signaling.protocol import PeerId


async def record(directory: Path) -> None:
    recorder = Recorder(directory, transcode=True)
    peer = PeerId("bob")
    recorder.expect(peer, {"audio", "video"})
    video = SyntheticVideoTrack("bob", width=320, height=240, fps=30)
    taps = [
        TrackTap(RemoteTrack(peer, "video"), video, [recorder]),
        TrackTap(RemoteTrack(peer, "audio"), ToneAudioTrack("bob"), [recorder]),
    ]
    for tap in taps:
        tap.start()
    while video.frames < 30:  # noqa: ASYNC110 (a frame counter has no event to wait on)
        await asyncio.sleep(0.05)
    print("recording", flush=True)
    await asyncio.Event().wait()


def main() -> int:
    try:
        asyncio.run(record(Path(sys.argv[1])))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
