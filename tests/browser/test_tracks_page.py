"""Every video track a Chromium page sends reaches the bot's sinks (issue 18): the page
adds a canvas track through its own renegotiation path (``negotiationneeded``) and a
counting consumer registered on the bot at run time gets frames of both tracks."""

from __future__ import annotations

import pytest

from peer import events as ev
from peer.mesh import LinkState
from signaling.protocol import PeerId
from tests.browser.bots import running_bot
from tests.browser.conftest import OpenPage
from tests.browser.pages import ADD_CANVAS_JS
from tests.peer.helpers import SMALL, TrackFrames
from tests.support import RunningServer, eventually, seconds

pytestmark = pytest.mark.asyncio(loop_scope="module")

WEB = PeerId("web")


async def test_a_canvas_track_the_page_adds_reaches_the_bots_sinks(
    signaling: RunningServer, open_page: OpenPage
) -> None:
    counts = TrackFrames()
    async with running_bot(signaling.ws_url, "bot", room="tracks", settings=SMALL) as bot:
        bot.agent.sinks.add(counts)
        web = await open_page("web", room=bot.agent.room)
        await bot.wait_state("web", LinkState.CONNECTED)
        await bot.wait_receiving("web", "video")
        canvas_id = await web.page.evaluate(ADD_CANVAS_JS, "bot")
        await eventually(
            lambda: all(counts.video_from(WEB).get(index, 0) >= 10 for index in (0, 1)),
            seconds(15),
            "frames of the camera and the canvas at the bot's sinks",
        )
        videos = [
            e.track
            for _, e in bot.events
            if isinstance(e, ev.TrackReceived) and e.peer == WEB and e.kind == "video"
        ]
        assert [(t.index, t.id == canvas_id) for t in videos] == [(0, False), (1, True)]
        assert all(track in counts.frames for track in videos)
        print(f"\nframes at the bot's sinks by video track index: {counts.video_from(WEB)}")
        bot.agent.sinks.remove(counts)
