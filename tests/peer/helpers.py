"""Shared pieces of the agent tests: small media, polling waits, agents that always leave."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from peer.agent import Agent
from peer.media.sources import LocalMedia, VideoSettings, open_local_media
from signaling.protocol import PeerId
from tests.support import seconds

#: Small and slow enough that three or four agents in one process leave CPU for the others.
SMALL = VideoSettings(width=160, height=120, fps=15)


def small_media(label: str, audio: str = "tone") -> LocalMedia:
    return open_local_media("synthetic", audio, label=label, settings=SMALL)


async def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``within`` scaled seconds."""
    deadline = time.monotonic() + seconds(within)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def frames_from(agent: Agent, peer: str, kind: str = "video") -> int:
    link = agent.links.get(PeerId(peer))
    if link is None:
        return 0
    tap = link.tap("video" if kind == "video" else "audio")
    return tap.frames if tap is not None else 0


def full_mesh_flowing(agents: Sequence[Agent], minimum: int = 5) -> bool:
    return all(frames_from(a, b.peer_id) >= minimum for a in agents for b in agents if a is not b)


@asynccontextmanager
async def agents(
    url: str, names: Sequence[str], room: str = "test", **kwargs: Any
) -> AsyncIterator[list[Agent]]:
    """Agents joined one after another; all leave and stop their media afterwards."""
    joined: list[Agent] = []
    medias: list[LocalMedia] = []
    try:
        for name in names:
            media = small_media(name)
            medias.append(media)
            agent = Agent(url, room=room, peer_id=name, media=media, **kwargs)
            await agent.join()
            joined.append(agent)
        yield joined
    finally:
        await asyncio.gather(*(a.leave() for a in joined))
        for media in medias:
            media.stop()
