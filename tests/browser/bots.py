"""A peer agent in a browser room, with waits on what it receives (tests and benchmarks)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from peer import events as ev
from peer.agent import Agent
from peer.media.sources import VideoSettings, open_local_media
from peer.mesh import LinkState
from tests.support import eventually, seconds


@dataclass
class Bot:
    agent: Agent
    #: (peer, kind) -> time.time() of the first decoded frame (wall clock, as the pages use).
    first_frames: dict[tuple[str, str], float] = field(default_factory=dict)
    #: Every event with the time.time() it arrived.
    events: list[tuple[float, ev.Event]] = field(default_factory=list)
    join_sent_at: float = 0.0

    def _on_event(self, event: ev.Event) -> None:
        now = time.time()
        self.events.append((now, event))
        if isinstance(event, ev.FirstFrame):
            self.first_frames.setdefault((event.peer, event.kind), now)

    @property
    def peer_id(self) -> str:
        return str(self.agent.peer_id)

    def frames(self, peer: str, kind: str = "video") -> int:
        link = self.agent.links.get(peer)  # type: ignore[call-overload]
        tap = link.tap(kind) if link is not None else None
        return tap.frames if tap is not None else 0

    def state(self, peer: str) -> LinkState | None:
        link = self.agent.links.get(peer)  # type: ignore[call-overload]
        return link.state if link is not None else None

    async def wait_receiving(self, peer: str, kind: str = "video", within: float = 20) -> None:
        """Until frames of ``kind`` from ``peer`` keep arriving (two samples, rising)."""
        seen: list[int] = []

        async def rising() -> bool:
            seen.append(self.frames(peer, kind))
            return len(seen) >= 2 and seen[-1] > seen[-2] > 0

        await eventually(rising, seconds(within), f"{self.peer_id} receiving {kind} from {peer}")

    async def wait_state(self, peer: str, state: LinkState, within: float = 20) -> None:
        async def reached() -> bool:
            return self.state(peer) is state

        await eventually(reached, seconds(within), f"{self.peer_id}: {peer} {state}")

    async def wait_closed(self, peer: str, within: float = 10) -> None:
        """Until the agent has closed ``peer``'s connection and released its media (the
        recorder's file is final by then: the agent reports CLOSED after finishing it)."""

        async def closed() -> bool:
            return peer not in self.agent.links and any(
                isinstance(e, ev.ConnectionStateChanged)
                and e.peer == peer
                and e.state is LinkState.CLOSED
                for _, e in self.events
            )

        await eventually(closed, seconds(within), f"{self.peer_id} closing its link to {peer}")


@asynccontextmanager
async def running_bot(
    ws_url: str,
    peer_id: str,
    *,
    room: str | None = None,
    video: str = "synthetic",
    audio: str = "tone",
    join: bool = True,
    settings: VideoSettings | None = None,
    **agent_options: Any,
) -> AsyncIterator[Bot]:
    """A joined agent sending ``video``/``audio`` (``settings``: size and rate); it leaves
    and stops its media on exit."""
    media = open_local_media(video, audio, label=peer_id, settings=settings)
    agent = Agent(ws_url, room=room, peer_id=peer_id, media=media, **agent_options)
    bot = Bot(agent)
    agent.add_listener(bot._on_event)
    try:
        if join:
            bot.join_sent_at = time.time()
            await agent.join()
        yield bot
    finally:
        await agent.leave()
        media.stop()
