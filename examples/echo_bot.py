"""Echo bot: sends each peer its own video and audio back (a mirror to test a camera and mic).

python examples/echo_bot.py ws://127.0.0.1:8080/ws lobby

On a server run with --auth-secret-file, give it a token for the ID "echo":
export MESHPEER_TOKEN=$(meshpeer token --secret-file FILE --room lobby --id echo)
"""

from __future__ import annotations

import asyncio
import os
import sys

from peer import Agent, TrackReceived

#: The access token of a server that requires one (meshpeer token ... --id echo).
TOKEN = os.environ.get("MESHPEER_TOKEN") or None


async def main(url: str, room: str) -> None:
    # always_send: negotiate a sending slot per kind although the bot has no media of its own
    async with Agent(url, room=room, peer_id="echo", token=TOKEN, always_send=True) as agent:
        async for event in agent.events():
            if isinstance(event, TrackReceived):
                agent.send_track(event.peer, event.kind, event.track.subscribe())


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
