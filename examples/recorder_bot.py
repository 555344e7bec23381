"""Recorder bot: joins a room without sending anything and records every peer to its own file.

python examples/recorder_bot.py ws://127.0.0.1:8080/ws lobby recordings/

On a server run with --auth-secret-file, give it a token for the ID "recorder":
export MESHPEER_TOKEN=$(meshpeer token --secret-file FILE --room lobby --id recorder)
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from peer import Agent, PeerJoined, PeerLeft, Recorder

#: The access token of a server that requires one (meshpeer token ... --id recorder).
TOKEN = os.environ.get("MESHPEER_TOKEN") or None


async def main(url: str, room: str, folder: str) -> None:
    recorder = Recorder(Path(folder))
    try:
        async with Agent(
            url, room=room, peer_id="recorder", token=TOKEN, recorder=recorder
        ) as agent:
            async for event in agent.events():
                if isinstance(event, PeerJoined | PeerLeft):
                    print(event)
    finally:
        print("recorded:", *await recorder.close())


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
