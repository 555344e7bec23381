"""Chat bot: answers every message sent to it on the data channel (from `meshpeer join
--chat`, the browser page's chat or another bot's send_data).

python examples/chat_bot.py ws://127.0.0.1:8080/ws lobby

On a server run with --auth-secret-file, give it a token for the ID "chatbot":
export MESHPEER_TOKEN=$(meshpeer token --secret-file FILE --room lobby --id chatbot)
"""

from __future__ import annotations

import asyncio
import os
import sys

from peer import Agent, DataReceived

#: The access token of a server that requires one (meshpeer token ... --id chatbot).
TOKEN = os.environ.get("MESHPEER_TOKEN") or None


async def main(url: str, room: str) -> None:
    async with Agent(url, room=room, peer_id="chatbot", token=TOKEN) as agent:
        async for event in agent.events():
            if isinstance(event, DataReceived) and event.channel == "meshpeer":
                said = event.data if isinstance(event.data, str) else f"{len(event.data)} bytes"
                agent.send_data(f"{event.peer}, you said: {said}", to=event.peer)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
