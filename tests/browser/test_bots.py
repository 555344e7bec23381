"""Bots (the Python peer agent) and the page in one room, in real Chromium."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import av
import pytest
from playwright.async_api import Browser, Playwright, WebSocket, WebSocketRoute

from peer.media.recorder import Recorder
from peer.mesh import LinkState
from signaling.protocol import CloseCode, PeerId
from signaling.reasons import LeaveReason
from tests.browser.bots import running_bot
from tests.browser.conftest import OpenPage
from tests.browser.pages import (
    PHONE,
    SIGNALING_SOCKET,
    artifacts_dir,
    open_room_page,
    persistent_browser,
)
from tests.media.clips import decoded_frames
from tests.support import RunningServer, eventually, interruptible, seconds

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

RECORDER_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "recorder_bot.py"


@pytest.mark.parametrize("first", ["bot", "browser"])
async def test_bot_and_browser_exchange_media(
    first: str, signaling: RunningServer, open_page: OpenPage
) -> None:
    """Both offer directions: whoever joins second offers. Then one of them leaves."""
    room = f"duo-{first}"
    if first == "browser":
        web = await open_page("web", room=room)
        await web.wait_joined()
    async with running_bot(signaling.ws_url, "bot", room=room) as bot:
        if first == "bot":
            web = await open_page("web", room=room)
        await bot.wait_state("web", LinkState.CONNECTED)
        await web.wait_state("bot", "connected")
        await bot.wait_receiving("web", "video")
        await bot.wait_receiving("web", "audio")
        await web.wait_receiving("bot", "video")
        await web.wait_receiving("bot", "audio")
        assert await web.video_size("bot") == 640

        if first == "browser":
            # The browser leaves: the bot closes that connection and forgets the peer.
            await web.leave()
            await bot.wait_closed("web")
            assert bot.agent.members == set()
            return
    # The bot left (the context manager): its tile goes away.
    await web.page.wait_for_selector(".tile[data-peer='bot']", state="detached")
    assert (await web.snapshot())["peers"] == {}
    assert await web.tile_names() == []


@pytest.mark.parametrize("first", ["bot", "browser"])
async def test_send_only_bot_is_sent_nothing_by_a_browser(
    first: str, signaling: RunningServer, open_page: OpenPage
) -> None:
    """receive=False with Chromium, both offer directions: the page plays the bot, and
    its camera and microphone never reach the bot (the bot's m-lines are sendonly)."""
    room = f"cast-{first}"
    if first == "browser":
        web = await open_page("web", room=room)
        await web.wait_joined()
    async with running_bot(signaling.ws_url, "bot", room=room, receive=False) as bot:
        if first == "bot":
            web = await open_page("web", room=room)
        await bot.wait_state("web", LinkState.CONNECTED)
        await web.wait_receiving("bot", "video")
        await web.wait_receiving("bot", "audio")
        await asyncio.sleep(1)  # the page's camera would be flowing by now
        link = bot.agent.links[PeerId("web")]
        report = await link.pc.getStats()
        inbound = [s for s in report.values() if s.type == "inbound-rtp"]
        assert sum(int(s.packetsReceived) for s in inbound) == 0
        assert link.taps == []
        assert {t.currentDirection for t in link.pc.getTransceivers()} == {"sendonly"}


async def test_two_browsers_and_a_bot_form_a_full_mesh(
    signaling: RunningServer, open_page: OpenPage
) -> None:
    alice = await open_page("alice", room="trio")
    await alice.wait_joined()
    async with running_bot(signaling.ws_url, "bot", room="trio") as bot:
        await bot.wait_state("alice", LinkState.CONNECTED)
        bob = await open_page("bob", room="trio")
        for page in (alice, bob):
            for other in {"alice", "bob", "bot"} - {page.peer_id}:
                await page.wait_state(other, "connected")
                await page.wait_receiving(other, "video")
                await page.wait_receiving(other, "audio")
        for other in ("alice", "bob"):
            await bot.wait_receiving(other, "video")
            await bot.wait_receiving(other, "audio")
        assert set(bot.agent.links) == {"alice", "bob"}
        assert sorted(await alice.tile_names()) == ["bob", "bot"]
        await alice.page.screenshot(path=artifacts_dir() / "page-with-bot-desktop.png")
        await bob.page.set_viewport_size(PHONE)
        await bob.page.screenshot(path=artifacts_dir() / "page-with-bot-phone.png", full_page=True)


async def test_viewer_without_camera_connects_to_bots(
    playwright: Playwright, signaling: RunningServer
) -> None:
    """Camera refused: the page says so, hides its addresses behind mDNS names and still
    receives both from a bot it offers to and from a bot that offers to it."""
    async with (
        running_bot(signaling.ws_url, "bot-early", room="watch") as early,
        persistent_browser(playwright, camera=False) as context,
    ):
        sent: list[dict[str, object]] = []

        def on_websocket(ws: WebSocket) -> None:
            ws.on("framesent", lambda frame: sent.append(json.loads(frame)))

        page = context.pages[0] if context.pages else await context.new_page()
        page.on("websocket", on_websocket)
        viewer = await open_room_page(
            context, signaling.http_url, peer_id="viewer", room="watch", page=page
        )
        snap = await viewer.wait_joined()
        assert snap["sending"] == {"audio": False, "video": False}
        assert any("blocked" in text for text in await viewer.notices())
        await viewer.wait_receiving("bot-early", "video")
        await early.wait_state("viewer", LinkState.CONNECTED)

        async with running_bot(signaling.ws_url, "bot-late", room="watch") as late:
            await late.wait_state("viewer", LinkState.CONNECTED)
            await viewer.wait_receiving("bot-late", "video")
            await viewer.wait_receiving("bot-late", "audio")

        candidates = [
            m["candidate"]["candidate"]  # type: ignore[index]
            for m in sent
            if m.get("type") == "candidate" and m.get("candidate")
        ]
        assert candidates, "the page trickled no candidates"
        hosts = [c.split()[4] for c in candidates if " typ host " in c]
        assert hosts and all(h.endswith(".local") for h in hosts), candidates


@pytest.mark.parametrize("first", ["recorder", "browser"])
async def test_recorder_bot_records_a_browser_until_it_leaves(
    first: str, signaling: RunningServer, open_page: OpenPage, tmp_path: Path
) -> None:
    """A receive-only bot records the browser; leaving finalises a file with both kinds."""
    room = f"rec-{first}"
    recorder = Recorder(tmp_path)
    if first == "browser":
        web = await open_page("web", room=room)
        await web.wait_joined()
    async with running_bot(
        signaling.ws_url, "rec", room=room, video="none", audio="none", recorder=recorder
    ) as bot:
        if first == "recorder":
            web = await open_page("web", room=room)
        await bot.wait_receiving("web", "video")
        await bot.wait_receiving("web", "audio")
        await web.wait_state("rec", "connected")
        # The bot sends nothing: its tile shows its name instead of a picture.
        assert await web.page.get_attribute(".tile[data-peer='rec']", "class") == (
            "tile remote no-video"
        )

        async def a_second_recorded() -> bool:
            return bot.frames("web", "video") >= 20

        await eventually(a_second_recorded, seconds(20), "20 video frames from the browser")
        await web.leave()
        await bot.wait_closed("web")
        # The visit's thread writes what it still holds and closes the file meanwhile.
        files = await eventually(recorder.files, seconds(5), "the browser's file")
        assert len(files) == 1 and files[0].name.startswith("web")
    await recorder.close()
    counts = await asyncio.to_thread(decoded_frames, files[0])
    assert counts["video"] >= 15
    assert counts["audio"] >= 20
    assert (counts["width"], counts["height"]) == (640, 480)


async def test_page_rejoins_after_its_websocket_drops(
    signaling: RunningServer, open_page: OpenPage
) -> None:
    """The network drops the page's signaling socket: it says so, rejoins by itself and
    negotiates afresh with the bot (which saw it leave and come back)."""
    async with running_bot(signaling.ws_url, "bot", room="flaky") as bot:
        web = await open_page("web", room="flaky")
        await web.wait_receiving("bot", "video")
        await bot.wait_receiving("web", "video")
        first_join = (await web.snapshot())["joinSentAt"]

        dropped = [c for c in signaling.server.connections if c.peer_id == "web"]
        assert len(dropped) == 1
        dropped[0].end(CloseCode.GOING_AWAY, LeaveReason.DROPPED, abort=True)  # no close frame

        async def rejoined() -> bool:
            snap = await web.snapshot()
            return bool(snap["joined"] and snap["joinSentAt"] != first_join)

        await eventually(rejoined, seconds(10), "the page to join again")
        await web.wait_state("bot", "connected")
        await web.wait_receiving("bot", "video")
        await bot.wait_receiving("web", "video")
        assert await web.page.text_content("#status") == "In the room"
        assert await web.notices() == []  # the "reconnecting" notice is gone
        assert await web.tile_names() == ["bot"]


async def test_new_connections_replace_old_ones_both_ways(
    signaling: RunningServer, open_page: OpenPage
) -> None:
    """After a failure the side that offered starts a new RTCPeerConnection (new DTLS
    certificate); the other side must drop its old one and answer, whoever it is."""
    web = await open_page("web", room="again")
    await web.wait_joined()
    async with running_bot(signaling.ws_url, "bot", room="again") as bot:
        await web.wait_receiving("bot", "video")
        old_link = bot.agent.links[PeerId("web")]

        # The bot offers a new connection (what it does when its offered one failed).
        await bot.agent.call(PeerId("web"))
        await bot.wait_state("web", LinkState.CONNECTED)
        assert bot.agent.links[PeerId("web")] is not old_link
        await web.wait_state("bot", "connected")
        await web.wait_receiving("bot", "video")
        await bot.wait_receiving("web", "video")

        # The page starts over (its Retry button does this).
        old_link = bot.agent.links[PeerId("web")]
        await web.page.evaluate("meshpeer.page.restartLink('bot')")

        async def replaced() -> bool:
            link = bot.agent.links.get(PeerId("web"))
            return link is not None and link is not old_link

        await eventually(replaced, seconds(10), "the bot answering the page's new connection")
        await web.wait_state("bot", "connected")
        await web.wait_receiving("bot", "video")
        await bot.wait_receiving("web", "video")
        assert await web.tile_names() == ["bot"]


async def test_recorder_example_records_a_browser(
    signaling: RunningServer, open_page: OpenPage, tmp_path: Path
) -> None:
    """examples/recorder_bot.py as a user runs it, against a browser in the room."""
    web = await open_page("web", room="studio")
    await web.wait_joined()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-X",
        "faulthandler",
        str(RECORDER_EXAMPLE),
        signaling.ws_url,
        "studio",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=interruptible,
    )
    try:
        await web.wait_state("recorder", "connected", within=30)

        async def sent_frames() -> bool:
            count: int = await web.page.evaluate(
                """async () => {
                    let frames = 0;
                    (await meshpeer.page.links.get('recorder').pc.getStats()).forEach((s) => {
                        if (s.type === 'outbound-rtp' && s.kind === 'video') frames += s.framesSent;
                    });
                    return frames;
                }"""
            )
            return count >= 40  # two seconds of the fake camera

        await eventually(sent_frames, seconds(20), "the page sending 40 frames to the recorder")
        await web.leave()
        process.send_signal(signal.SIGINT)  # Ctrl-C: the example finalises its files and exits
        try:
            output, _ = await asyncio.wait_for(process.communicate(), seconds(20))
        except TimeoutError:  # -X faulthandler: every thread's stack on SIGABRT
            process.send_signal(signal.SIGABRT)
            output, _ = await asyncio.wait_for(process.communicate(), seconds(10))
            pytest.fail(f"the example did not exit 20 s after Ctrl-C:\n{output.decode()[-8000:]}")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    files = await asyncio.to_thread(lambda: sorted(tmp_path.glob("web*")))
    assert len(files) == 1, text
    assert f"recorded: {files[0]}" in text
    try:
        counts = await asyncio.to_thread(decoded_frames, files[0])
    except av.FFmpegError as exc:  # once in a loaded two-worker run: say what the bot said
        size = files[0].stat().st_size
        pytest.fail(f"{files[0].name} ({size} bytes) does not decode: {exc}\n{text[-6000:]}")
    assert counts["video"] >= 30, (counts, text)
    assert counts["audio"] >= 50, (counts, text)


async def test_page_takes_its_id_back_with_the_resume_token(
    signaling: RunningServer, browser: Browser
) -> None:
    """The page loses its socket while the server still holds its ID (a half-open TCP
    connection): it rejoins with the server's resume token instead of "name taken"."""
    routes: list[WebSocketRoute] = []

    def relay(route: WebSocketRoute) -> None:
        route.connect_to_server()  # pass-through; kept to cut the page's side later
        route.on_close(lambda code, reason: None)  # closing the page's side keeps the other
        routes.append(route)

    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.route_web_socket(SIGNALING_SOCKET, relay)
        async with running_bot(signaling.ws_url, "bot", room="resume") as bot:
            web = await open_room_page(
                context, signaling.http_url, peer_id="web", room="resume", page=page
            )
            await web.wait_receiving("bot", "video")

            await routes[0].close(code=4000, reason="network gone")  # the server's side stays

            async def rejoined() -> bool:
                return len(routes) == 2 and bool((await web.snapshot())["joined"])

            await eventually(rejoined, seconds(10), "the page to rejoin on a new socket")
            await web.wait_state("bot", "connected")
            await web.wait_receiving("bot", "video")
            await bot.wait_receiving("web", "video")
            assert signaling.server.metrics.leaves[LeaveReason.REPLACED] == 1  # a resume
            assert await web.notices() == []
    finally:
        await context.close()
