"""The room page's life around its connections (issue 8): leaving before the camera answers,
working media connections kept across a signaling rejoin and a peer's resume, reconnect
jitter, bounded early candidates, and video tiles that do not pile up listeners."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page

from peer.mesh import LinkState
from signaling.protocol import CloseCode, PeerId
from signaling.reasons import LeaveReason
from tests.browser.bots import running_bot
from tests.browser.conftest import OpenPage
from tests.browser.pages import SIGNALING_SOCKET, RoomPage, Transcript, page_constant
from tests.support import RunningServer, eventually, seconds

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

#: getUserMedia that turns the camera on at once but tells the page only when the test says
#: so: a permission prompt the person has not answered yet.
HELD_CAMERA = """(() => {
    const devices = navigator.mediaDevices;
    const original = devices.getUserMedia.bind(devices);
    let release;
    const released = new Promise((resolve) => { release = resolve; });
    window.heldCamera = { streams: [], release: () => release() };
    devices.getUserMedia = async (constraints) => {
        const stream = await original(constraints);
        window.heldCamera.streams.push(stream);
        await released;
        return stream;
    };
})()"""

#: Counts every addEventListener on a <video>, per element and event type.
COUNT_VIDEO_LISTENERS = """(() => {
    const counts = new WeakMap();
    const add = EventTarget.prototype.addEventListener;
    EventTarget.prototype.addEventListener = function (type, listener, options) {
        if (this instanceof HTMLVideoElement) {
            const mine = counts.get(this) ?? {};
            mine[type] = (mine[type] ?? 0) + 1;
            counts.set(this, mine);
        }
        return add.call(this, type, listener, options);
    };
    window.videoListeners = (video) => counts.get(video) ?? {};
})()"""


#: The page's grace for a working connection after its peer's ``peer-left`` (app.js), s.
PEER_LEFT_GRACE = page_constant("app.js", "PEER_LEFT_GRACE_MS") / 1000
#: performance.now() is coarsened (Chromium: 0.1 ms) and a timer may round down by as much.
CLOCK_SLACK = 0.002

#: In the page, before a ``peer-left`` for PEER comes: right after the page handled it (a
#: listener behind the page's own), whether the marked connection was still open, and when
#: (page clock, ms) it closed. window.peerLeftWatch = {leftAt, openAtLeft, closedAt}.
WATCH_PEER_LEFT = """(peer) => {
    const pc = window.markedPc;
    const watch = { leftAt: null, openAtLeft: null, closedAt: null };
    window.peerLeftWatch = watch;
    meshpeer.page.signaling.addEventListener('message', ({ detail }) => {
        if (detail.type !== 'peer-left' || detail.peerId !== peer || watch.leftAt !== null) {
            return;
        }
        watch.leftAt = performance.now();
        watch.openAtLeft =
            meshpeer.page.links.get(peer)?.pc === pc && pc.connectionState !== 'closed';
    });
    const poll = setInterval(() => {
        if (pc.connectionState !== 'closed') return;
        watch.closedAt = performance.now();
        clearInterval(poll);
    }, 2);
}"""


async def mark(me: RoomPage, peer: str) -> None:
    """Tag the RTCPeerConnection ``me`` holds to ``peer``, to tell later if it is the same."""
    await me.page.evaluate(
        "(peer) => { window.markedPc = meshpeer.page.links.get(peer).pc; }", peer
    )


async def same_connection(me: RoomPage, peer: str) -> bool:
    """Whether ``me`` still talks to ``peer`` over the tagged RTCPeerConnection, open."""
    same: bool = await me.page.evaluate(
        """(peer) => meshpeer.page.links.get(peer)?.pc === window.markedPc
            && window.markedPc.connectionState !== 'closed'""",
        peer,
    )
    return same


async def test_leave_before_the_camera_answers(
    signaling: RunningServer, open_page: OpenPage
) -> None:
    """Leave works while the browser still asks for the camera: the page leaves at once
    (nothing sent, no socket) and the camera, granted later, goes straight off."""
    sockets: list[str] = []

    async def hold_camera(page: Page) -> None:
        await page.add_init_script(HELD_CAMERA)
        page.on("websocket", lambda ws: sockets.append(ws.url))

    early = await open_page("early", room="prompt", setup=hold_camera)

    async def camera_on() -> bool:
        count: int = await early.page.evaluate("window.heldCamera.streams.length")
        return count == 1

    await eventually(camera_on, seconds(10), "the camera to be on")
    assert await early.page.text_content("#status") == "Starting camera…"

    await early.leave()
    await early.page.wait_for_selector("#join-dialog[open]", timeout=seconds(2) * 1000)
    assert await early.page.text_content("#status") == "You left the room"

    # The prompt is answered after we left: the page stops the tracks as they arrive.
    states = await early.page.evaluate(
        """async () => {
            window.heldCamera.release();
            await new Promise((resolve) => setTimeout(resolve, 50));
            return window.heldCamera.streams.flatMap((s) => s.getTracks()).map((t) => t.readyState);
        }"""
    )
    assert states == ["ended", "ended"], states  # audio and video
    await asyncio.sleep(seconds(0.5))
    assert sockets == []
    assert signaling.server.metrics.connections_total == 0
    assert await early.page.evaluate("document.getElementById('local-video').srcObject === null")
    assert not (await early.snapshot())["joined"]


async def test_rejoin_keeps_working_connections(open_page: OpenPage) -> None:
    """A dropped signaling socket does not touch the media: after the rejoin both pages
    still use the same RTCPeerConnection, and nobody offered again. A fresh offer from the
    other side (a new connection) still replaces it."""
    transcript = Transcript()

    async def relay(page: Page) -> None:
        await page.route_web_socket(SIGNALING_SOCKET, transcript.relay)

    one = await open_page("one", room="keep", setup=relay)
    await one.wait_joined()
    two = await open_page("two", room="keep")
    for me, other in ((one, two), (two, one)):
        await me.wait_receiving(other.peer_id)
        await mark(me, other.peer_id)
    offers = len(transcript.of_type("offer", transcript.sent))

    await transcript.routes[0].close(code=4000, reason="network gone")  # server side stays

    async def rejoined() -> bool:
        return len(transcript.routes) == 2 and bool((await one.snapshot())["joined"])

    await eventually(rejoined, seconds(10), "the page to rejoin on a new socket")
    await asyncio.sleep(PEER_LEFT_GRACE + seconds(0.5))  # past two's grace for one's peer-left
    assert await same_connection(one, "two")
    assert await same_connection(two, "one")  # one's resume: peer-left then peer-joined
    assert len(transcript.of_type("offer", transcript.sent)) == offers
    assert (await one.snapshot())["peers"] == {"two": "connected"}
    assert (await two.snapshot())["peers"] == {"one": "connected"}
    await one.wait_receiving("two")
    await two.wait_receiving("one")
    assert await one.notices() == []

    # The other side starts a new connection (its Retry button): that offer replaces ours.
    await two.page.evaluate("meshpeer.page.restartLink('one')")

    async def replaced() -> bool:
        return not await same_connection(one, "two")

    await eventually(replaced, seconds(10), "one taking two's new connection")
    await one.wait_state("two", "connected")
    await one.wait_receiving("two")
    await two.wait_receiving("one")


async def test_rejoin_keeps_the_connection_with_a_bot(
    signaling: RunningServer, open_page: OpenPage
) -> None:
    """The same with the Python agent on the other side: it sees the page resume (peer-left
    then peer-joined) and keeps its connection; so does the page."""
    transcript = Transcript()

    async def relay(page: Page) -> None:
        await page.route_web_socket(SIGNALING_SOCKET, transcript.relay)

    async with running_bot(signaling.ws_url, "bot", room="keep-bot") as bot:
        web = await open_page("web", room="keep-bot", setup=relay)
        await web.wait_receiving("bot")
        await bot.wait_receiving("web")
        await mark(web, "bot")
        old_link = bot.agent.links[PeerId("web")]
        offers = len(transcript.of_type("offer", transcript.sent))

        await transcript.routes[0].close(code=4000, reason="network gone")

        async def rejoined() -> bool:
            return len(transcript.routes) == 2 and bool((await web.snapshot())["joined"])

        await eventually(rejoined, seconds(10), "the page to rejoin on a new socket")
        await asyncio.sleep(bot.agent.peer_left_grace + seconds(0.5))  # past the bot's grace
        assert await same_connection(web, "bot")
        assert bot.agent.links[PeerId("web")] is old_link
        assert len(transcript.of_type("offer", transcript.sent)) == offers
        await web.wait_receiving("bot")
        await bot.wait_receiving("web")


@pytest.mark.parametrize("case", ["left", "resumed", "server-going-away"])
async def test_peer_left_closes_a_working_connection_after_a_grace(
    case: str, open_page: OpenPage
) -> None:
    """``peer-left`` for a connected peer: closed after PEER_LEFT_GRACE, unless the same
    peer's ``peer-joined`` follows at once (a resume) or the server closes with 1001
    (shutting down: it announces everyone as leaving, but their media still flows).

    "Not at once" and "after the grace" are read on the page's own clock, from the moment
    it handled the ``peer-left``: a slow test process cannot blur them."""
    transcript = Transcript()

    async def relay(page: Page) -> None:
        await page.route_web_socket(SIGNALING_SOCKET, transcript.relay)

    one = await open_page("one", room=f"grace-{case}", setup=relay)
    await one.wait_joined()
    two = await open_page("two", room=f"grace-{case}")
    await one.wait_receiving("two")
    await mark(one, "two")
    await one.page.evaluate(WATCH_PEER_LEFT, "two")

    transcript.to_page({"type": "peer-left", "peerId": "two"})
    if case == "resumed":
        transcript.to_page({"type": "peer-joined", "peerId": "two"})
    elif case == "server-going-away":
        await transcript.routes[-1].close(code=1001, reason="server shutting down")

    async def watched(key: str) -> dict[str, Any] | None:
        watch: dict[str, Any] = await one.page.evaluate("window.peerLeftWatch")
        return watch if watch[key] is not None else None

    watch = await eventually(lambda: watched("leftAt"), seconds(5), "the page's peer-left")
    assert watch["openAtLeft"], watch  # not at once, in every case
    if case == "left":
        watch = await eventually(
            lambda: watched("closedAt"),
            PEER_LEFT_GRACE + seconds(2),
            "the connection to close after the grace",
        )
        kept = (watch["closedAt"] - watch["leftAt"]) / 1000
        assert kept >= PEER_LEFT_GRACE - CLOCK_SLACK, (kept, watch)
        return

    await asyncio.sleep(PEER_LEFT_GRACE + seconds(1))  # well past the grace
    assert (await one.page.evaluate("window.peerLeftWatch"))["closedAt"] is None
    assert await same_connection(one, "two")
    assert (await one.snapshot())["peers"] == {"two": "connected"}
    assert await one.tile_names() == ["two"]
    if case == "server-going-away":

        async def rejoined() -> bool:
            return len(transcript.routes) == 2 and bool((await one.snapshot())["joined"])

        await eventually(rejoined, seconds(10), "the page to rejoin after the 1001")
        await asyncio.sleep(PEER_LEFT_GRACE + seconds(0.5))
        assert await same_connection(one, "two")
        assert await one.notices() == []
    await one.wait_receiving("two")
    await two.wait_receiving("one")


async def test_rejoin_after_the_other_side_gave_up_connects_afresh(
    signaling: RunningServer, open_page: OpenPage
) -> None:
    """The page is away longer than the bot's grace: the bot closes its connection, the
    page notices at once (DTLS close) instead of keeping a dead one across its rejoin, and
    offers afresh when back, although the bot made the first connection."""
    transcript = Transcript()

    async def relay(page: Page) -> None:
        await page.route_web_socket(SIGNALING_SOCKET, transcript.relay)

    web = await open_page("web", room="gave-up", setup=relay)
    await web.wait_joined()
    async with running_bot(signaling.ws_url, "bot", room="gave-up") as bot:
        await web.wait_receiving("bot")
        await bot.wait_receiving("web")
        await mark(web, "bot")

        transcript.blocked = True  # the network is down for a while
        (dropped,) = [c for c in signaling.server.connections if c.peer_id == "web"]
        dropped.end(CloseCode.GOING_AWAY, LeaveReason.DROPPED, abort=True)
        await bot.wait_closed("web")
        await web.wait_state("bot", "failed", within=3)  # ICE alone would say so after ~15 s
        transcript.blocked = False

        async def rejoined() -> bool:
            return len(transcript.routes) == 2 and bool((await web.snapshot())["joined"])

        await eventually(rejoined, seconds(10), "the page to rejoin")
        await web.wait_state("bot", "connected")
        await bot.wait_state("web", LinkState.CONNECTED)
        assert not await same_connection(web, "bot")
        await web.wait_receiving("bot")
        await bot.wait_receiving("web")
        assert transcript.refused >= 1


async def test_hung_up_answerer_offers_when_nobody_else_does(open_page: OpenPage) -> None:
    """The other side drops a connection we still think works and waits for our offer (it
    saw us come back while its connection looked down: the newcomer offers). We answered
    that connection, but offer a new one once it hangs up and no new offer comes."""
    transcript = Transcript()

    async def relay(page: Page) -> None:
        await page.route_web_socket(SIGNALING_SOCKET, transcript.relay)

    one = await open_page("one", room="hung-up")
    await one.wait_joined()
    two = await open_page("two", room="hung-up", setup=relay)  # two offers to one
    await one.wait_receiving("two")
    await two.wait_receiving("one")
    await mark(one, "two")

    # two sees one come back just while its ICE looks interrupted.
    await two.page.evaluate("meshpeer.page.links.get('one').state = 'disconnected'")
    transcript.to_page({"type": "peer-joined", "peerId": "one"})
    await one.wait_state("two", "failed", within=3)  # two hung up: DTLS close
    await one.wait_state("two", "connected", within=10)
    assert not await same_connection(one, "two")
    await one.wait_receiving("two")
    await two.wait_receiving("one")


async def test_reconnect_delays_have_jitter(open_page: OpenPage) -> None:
    """Backoff spread over ±25%, so a restarted server does not get every page back in the
    same millisecond; the client schedules its retry with it and Math.random()."""
    page = (await open_page("unit")).page
    result: dict[str, Any] = await page.evaluate(
        """async () => {
            const { retryDelay, SignalingClient } = await import('/static/signaling.js');
            const table = [0, 1, 2, 3, 4, 5, 6, 9].map(
                (attempt) => [0, 0.5, 0.999999].map((r) => retryDelay(attempt, r)));
            const realRandom = Math.random;
            const realTimeout = window.setTimeout;
            const delays = new Map();
            window.setTimeout = (fn, ms, ...rest) => {
                const id = realTimeout(fn, ms, ...rest);
                delays.set(id, ms);
                return id;
            };
            const scheduled = [];
            try {
                for (const random of [0, 0.999999]) {
                    Math.random = () => random;
                    // No socket at that path (404): it closes at once and a retry is due.
                    // This server, as the page's policy allows no other (connect-src).
                    const url = new URL('/no-socket-here', location.href);
                    url.protocol = 'ws:';
                    const client = new SignalingClient(url.href, { peerId: 'x', room: null });
                    const closed = new Promise((resolve) =>
                        client.addEventListener('disconnected', resolve, { once: true }));
                    client.connect();
                    await closed;
                    scheduled.push(delays.get(client.retryTimer));
                    client.close();
                }
            } finally {
                Math.random = realRandom;
                window.setTimeout = realTimeout;
            }
            return { table, scheduled };
        }"""
    )
    bases = [250, 500, 1000, 1000, 1000, 1000, 1000, 4000]  # attempts 0-6 and 9
    for (low, middle, high), base in zip(result["table"], bases, strict=True):
        assert low == pytest.approx(0.75 * base)
        assert middle == pytest.approx(base)
        assert high == pytest.approx(1.25 * base, rel=1e-5)
    assert result["scheduled"] == [pytest.approx(187.5), pytest.approx(312.5, rel=1e-5)]


async def test_early_candidates_are_bounded(signaling: RunningServer, open_page: OpenPage) -> None:
    """A peer that floods candidates before its answer: the page keeps the first 64 (as the
    agent does), warns once, and applies them when the answer comes."""
    async with aiohttp.ClientSession() as session, session.ws_connect(signaling.ws_url) as ghost:
        await ghost.send_json({"type": "join", "peerId": "ghost", "room": "flood"})
        assert (await ghost.receive_json())["type"] == "peer-list"
        web = await open_page("web", room="flood")
        while (frame := await ghost.receive_json(timeout=seconds(10)))["type"] != "offer":
            pass
        offer = frame["sdp"]
        for i in range(100):
            candidate = f"candidate:{i} 1 udp 2122260223 127.0.0.1 {20000 + i} typ host"
            await ghost.send_json(
                {
                    "type": "candidate",
                    "to": "web",
                    "candidate": {"candidate": candidate, "sdpMid": "0", "sdpMLineIndex": 0},
                }
            )

        async def queued() -> int:
            count: int = await web.page.evaluate(
                "meshpeer.page.links.get('ghost').pendingCandidates.length"
            )
            return count

        async def all_handled() -> bool:
            handled: int = await web.page.evaluate(
                """() => { const link = meshpeer.page.links.get('ghost');
                    return link.pendingCandidates.length + link.droppedCandidates; }"""
            )
            return handled == 100

        await eventually(all_handled, seconds(10), "the page to take all 100 candidates")
        assert await queued() == 64
        kept = await web.page.evaluate(
            "meshpeer.page.links.get('ghost').pendingCandidates.map((c) => c.candidate)"
        )
        assert kept[0].startswith("candidate:0 ") and kept[-1].startswith("candidate:63 ")
        warnings = [line for line in web.console if "candidates from ghost" in line]
        assert len(warnings) == 1 and warnings[0].startswith("warning:"), warnings

        # A real answer (made by a throwaway connection in the same browser) flushes the queue.
        answer = await web.page.evaluate(
            """async (sdp) => {
                window.ghostPc = new RTCPeerConnection();
                await window.ghostPc.setRemoteDescription({ type: 'offer', sdp });
                await window.ghostPc.setLocalDescription();
                return window.ghostPc.localDescription.sdp;
            }""",
            offer,
        )
        await ghost.send_json({"type": "answer", "to": "web", "sdp": answer})

        async def flushed() -> bool:
            return await queued() == 0

        await eventually(flushed, seconds(10), "the queued candidates applied")
        await web.page.evaluate("window.ghostPc.close()")


async def test_reused_video_tile_adds_its_listeners_once(open_page: OpenPage) -> None:
    """A tile's <video> gets a new stream whenever the connection is replaced: its listeners
    are added once, and the first frame is still noticed."""

    async def count_listeners(page: Page) -> None:
        await page.add_init_script(COUNT_VIDEO_LISTENERS)

    web = await open_page("web", room="tiles", setup=count_listeners)
    await web.wait_joined()
    result: dict[str, Any] = await web.page.evaluate(
        """async () => {
            const view = meshpeer.page.view;
            view.addPeer('screen');
            const tile = document.querySelector(".tile[data-peer='screen']");
            const video = tile.querySelector('video');
            const canvas = document.createElement('canvas');
            Object.assign(canvas, { width: 64, height: 48 });
            const g = canvas.getContext('2d');
            const paint = setInterval(() => {
                g.fillStyle = `hsl(${Date.now() % 360}, 80%, 50%)`;
                g.fillRect(0, 0, 64, 48);
            }, 40);
            try {
                for (let i = 0; i < 4; i++) {
                    view.setPeerStream('screen', canvas.captureStream(25));
                    await new Promise((resolve) => setTimeout(resolve, 250));
                }
                for (let i = 0; i < 40 && !view.firstFrameAt.has('screen'); i++) {
                    await new Promise((resolve) => setTimeout(resolve, 100));
                }
                return {
                    listeners: window.videoListeners(video),
                    firstFrame: view.firstFrameAt.has('screen'),
                    playing: tile.classList.contains('playing'),
                    noVideo: tile.classList.contains('no-video'),
                };
            } finally {
                clearInterval(paint);
                view.removePeer('screen');
            }
        }"""
    )
    assert result["listeners"] == {"loadeddata": 1, "resize": 1}, result
    assert result["firstFrame"] and result["playing"] and not result["noVideo"], result
