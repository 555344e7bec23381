"""Synthetic streamer: sends a 1280x720 test pattern and a tone to everyone in the room,
and asks no one for theirs (send-only: the viewers' uplinks are spared).

python examples/synthetic_streamer.py ws://127.0.0.1:8080/ws lobby

On a server run with --auth-secret-file, give it a token for the ID "streamer":
export MESHPEER_TOKEN=$(meshpeer token --secret-file FILE --room lobby --id streamer)
"""

from __future__ import annotations

import asyncio
import os
import sys

from peer import Agent, StatsReport, VideoSettings, open_local_media

#: The access token of a server that requires one (meshpeer token ... --id streamer).
TOKEN = os.environ.get("MESHPEER_TOKEN") or None


async def main(url: str, room: str) -> None:
    media = open_local_media(
        "synthetic", "tone", label="streamer", settings=VideoSettings(1280, 720, 30)
    )
    try:
        async with Agent(
            url, room=room, peer_id="streamer", token=TOKEN, media=media, receive=False
        ) as agent:
            async for event in agent.events():
                if isinstance(event, StatsReport):
                    print(" | ".join(s.line() for s in event.peers) or "waiting for viewers")
    finally:
        media.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
