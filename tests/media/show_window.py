"""Run by test_display under Xvfb: opens a DisplayWindow and waits until it is closed.

A subprocess, because Qt binds the process to the X server for good: when the test's
Xvfb goes away, Qt would take the pytest process down with it.
"""

from __future__ import annotations

import asyncio
import sys

import av
import numpy as np

from peer.events import RemoteTrack
from peer.media.display import DisplayWindow
from peer.media.mosaic import Mosaic
from peer.media.synthetic import SyntheticVideoTrack
from signaling.protocol import PeerId


async def show(title: str) -> int:
    mosaic = Mosaic()
    mosaic.put_local_frame(np.full((240, 320, 3), 90, dtype=np.uint8), label="me")
    window = DisplayWindow(mosaic, title=title, fps=20)
    window.start()
    track = SyntheticVideoTrack("remote", width=320, height=240, fps=30)
    remote = RemoteTrack(PeerId("remote"), "video")
    try:
        while not window.closed.is_set():
            frame = await track.recv()
            assert isinstance(frame, av.VideoFrame)
            mosaic.put_frame(remote, frame)
            if window.shown.is_set():
                print("shown", flush=True)
                window.shown.clear()
        print("closed", flush=True)
    finally:
        track.stop()
        await window.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(show(sys.argv[1])))
