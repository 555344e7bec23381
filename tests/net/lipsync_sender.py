"""A sender whose picture flashes and whose audio beeps at the same instants, for
test_lipsync_loss.py: ``python -m tests.net.lipsync_sender URL ROOM ID`` (cwd: the
repository) joins with ``tests.media.lipsync``'s tracks, prints ``joined`` and sends until
it is terminated (SIGTERM: it leaves)."""

from __future__ import annotations

import asyncio
import signal
import sys

from peer.agent import Agent
from peer.media.sources import LocalMedia
from signaling.protocol import PeerId
from tests.media.lipsync import BeepTrack, FlashTrack, ShowClock


async def send(url: str, room: str, peer_id: str) -> None:
    clock = ShowClock()
    media = LocalMedia(FlashTrack(clock, width=320, height=240), BeepTrack(clock))
    agent = Agent(url, room=room, peer_id=PeerId(peer_id), media=media)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await agent.join()
    print("joined", flush=True)
    try:
        await stop.wait()
    finally:
        await agent.leave()
        media.stop()


if __name__ == "__main__":
    asyncio.run(send(*sys.argv[1:4]))
