"""Every video track a Chromium page sends reaches the bot's sinks (issue 18): the page
adds a canvas track through its own renegotiation path (``negotiationneeded``) and a
counting consumer registered on the bot at run time gets frames of both tracks, and
``video_frames`` yields arrays of both, and a
recording bot writes both as streams of the page's file (issue 19)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import av
import pytest

from peer import events as ev
from peer.media.recorder import Recorder
from peer.mesh import LinkState
from signaling.protocol import PeerId
from tests.browser.bots import running_bot
from tests.browser.conftest import OpenPage
from tests.browser.pages import ADD_CANVAS_JS
from tests.media.clips import decoded_counts
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

        shapes: dict[int, tuple[int, ...]] = {}  # video_frames: arrays of both tracks

        async def read() -> None:
            async for frame in bot.agent.video_frames("web"):
                shapes[frame.track.index] = frame.array.shape
                if len(shapes) == 2:
                    return

        await asyncio.wait_for(read(), seconds(10))
        assert {i: (len(shape), shape[2]) for i, shape in shapes.items()} == {
            0: (3, 3),
            1: (3, 3),
        }, shapes


async def test_a_canvas_track_is_a_second_video_stream_of_the_recording(
    signaling: RunningServer, open_page: OpenPage, tmp_path: Path
) -> None:
    """A record-only bot (packets to file) and a page that shares a canvas once the file is
    written: the page's next segment holds the camera, the canvas and the microphone, the
    canvas with >= 90% of the camera's frames (issue 19)."""
    recorder = Recorder(tmp_path)
    async with running_bot(
        signaling.ws_url, "rec", room="tracks-rec", video="none", audio="none", recorder=recorder
    ) as bot:
        web = await open_page("web", room=bot.agent.room)
        await eventually(recorder.files, seconds(15), "the page's file open")
        await web.page.evaluate(ADD_CANVAS_JS, "rec")

        def canvas_frames() -> int:
            link = bot.agent.links.get(WEB)
            return sum(t.frames for t in link.taps if t.remote.index == 1) if link else 0

        await eventually(lambda: canvas_frames() >= 60, seconds(15), "3 s of the canvas")
        await web.leave()
        await bot.wait_closed("web")
    first, second = await recorder.close()
    assert second.name == first.name.replace(".mkv", "-part2.mkv")
    with av.open(str(second)) as container:
        streams = [(s.type, s.metadata.get("title")) for s in container.streams]
    assert streams == [("video", "video 0"), ("video", "video 1"), ("audio", "audio 0")]
    counts = decoded_counts(second)
    print(f"\nsegments: {decoded_counts(first)}, {counts} frames by stream")
    assert counts[1] >= 0.9 * counts[0] > 0
