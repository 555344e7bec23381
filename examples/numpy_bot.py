import asyncio
import sys

import numpy as np

from peer import Agent, VideoSource


async def main(url: str, room: str) -> None:
    shown = VideoSource(width=640, height=480, fps=15)  # what the bot sends, fed with arrays
    async with Agent(url, room=room, peer_id="numpy-bot") as agent:
        agent.publish(shown)  # to every peer in the room, present and future
        async for frame in agent.video_frames():  # each peer's newest picture, BGR uint8
            negative = await asyncio.to_thread(np.invert, frame.array)  # your work: in a thread
            shown.capture(negative)  # from any thread; scaled to 640x480
            print(frame.peer, frame.array.shape, "skipped", frame.skipped)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
