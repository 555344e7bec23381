"""Driving the room page in headless Chromium: launching, opening pages, waiting for media.

Debian's /usr/bin/chromium only (never a downloaded browser), with a fake camera and
microphone; every wait polls a condition against a deadline scaled by MESHPEER_TEST_SCALE.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    ViewportSize,
    WebSocketRoute,
)

from signaling.endpoints import STATIC_DIR
from tests.support import Timeout, eventually, seconds

CHROMIUM = Path(os.environ.get("MESHPEER_CHROMIUM", "/usr/bin/chromium"))
#: Flags that keep Chromium offline and quiet (PITFALLS.md): no background traffic, no QUIC.
QUIET_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
]
#: Grants camera and microphone without a prompt; without it, headless Chromium refuses them.
#: It also answers ``getDisplayMedia`` (after a click: it wants a user gesture) with a fake
#: screen, 1280x720 at 30 fps, labelled ``screen:-3:0``: no
#: ``--auto-select-desktop-capture-source`` needed (Chromium 156, measured).
GRANT_CAMERA = "--use-fake-ui-for-media-stream"
#: Two fake cameras (``fake_device_0``, ``fake_device_1``) instead of one; the microphones
#: are always three (``Fake Default Audio Input``, ``Fake Audio Input 1`` and ``2``). Given
#: after QUIET_FLAGS, it wins over their plain ``--use-fake-device-for-media-stream``.
#: Only the first sends: a WebRTC sender given ``fake_device_1`` (first, or through
#: ``replaceTrack``) encodes no frame at all (0 in 7 s, Chromium 156, measured), while
#: ``fake_device_0``, a second getUserMedia of it or a canvas resume within 1 s. Measure a
#: switch's picture gap with a canvas; ``fake_device_1`` only shows the picker's path.
TWO_CAMERAS = "--use-fake-device-for-media-stream=device-count=2"
#: The page's signaling WebSocket, for ``page.route_web_socket``: ``/ws``, with or without
#: the ``?room=`` the page adds for load balancers.
SIGNALING_SOCKET = re.compile(r"/ws(\?[^/]*)?$")

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

#: How many video tracks from ``peer`` the page decodes frames of (its current connection).
DECODING_JS = """
async (peer) => {
  const report = await meshpeer.page.links.get(peer).pc.getStats();
  return [...report.values()].filter(
    (s) => s.type === "inbound-rtp" && s.kind === "video" && s.framesDecoded > 0,
  ).length;
}
"""

#: Installed in a page: epoch ms of every video frame the tile of ``peer`` presents
#: (requestVideoFrameCallback), and of every change of the page's ``joined``.
WATCH_JS = """
(peer) => {
  const now = () => performance.timeOrigin + performance.now();
  const video = document.querySelector(`.tile[data-peer='${CSS.escape(peer)}'] video`);
  const log = { frames: [], joined: [] };
  window.__faults = log;
  const tick = () => { log.frames.push(now()); video.requestVideoFrameCallback(tick); };
  video.requestVideoFrameCallback(tick);
  let joined = meshpeer.page.joined;
  setInterval(() => {
    if (meshpeer.page.joined !== joined) {
      joined = meshpeer.page.joined;
      log.joined.push([now(), joined]);
    }
  }, 10);
}
"""

#: In the page: a painted canvas sent to ``peer`` as one more video track (the connection's
#: negotiationneeded sends the offer); answers the track's ID.
ADD_CANVAS_JS = """
(peer) => {
  const link = meshpeer.page.links.get(peer);
  const canvas = Object.assign(document.createElement("canvas"), { width: 160, height: 120 });
  const ctx = canvas.getContext("2d");
  let hue = 0;
  const paint = () => {
    ctx.fillStyle = `hsl(${(hue += 9) % 360} 80% 50%)`;
    ctx.fillRect(0, 0, 160, 120);
  };
  paint();
  window.__canvas = { timer: setInterval(paint, 50) };
  const stream = canvas.captureStream(20);
  const track = stream.getVideoTracks()[0];
  window.__canvas.sender = link.pc.addTrack(track, stream);
  return track.id;
}
"""

#: Every Content-Security-Policy violation in a page, to its console (where Chromium's own
#: "Refused to ..." lines go too), so a test sees it whatever Chromium itself logs.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => console.error(
  `csp-violation: ${event.effectiveDirective} refused ${event.blockedURI || "inline code"}`));
"""


def page_constant(module: str, name: str) -> float:
    """The number in the page's ``const NAME = <number>;`` (``module``: e.g. ``app.js``): a
    wait that races one of the page's own timers is derived from it, never scaled."""
    source = (STATIC_DIR / module).read_text()
    match = re.search(rf"^const {re.escape(name)} = ([0-9_.]+);", source, re.MULTILINE)
    if match is None:
        raise AssertionError(f"no `const {name} = <number>;` in {STATIC_DIR / module}")
    return float(match.group(1).replace("_", ""))


def artifacts_dir() -> Path:
    """Where screenshots go: $MESHPEER_ARTIFACTS or tests/artifacts (gitignored)."""
    configured = os.environ.get("MESHPEER_ARTIFACTS")
    path = Path(configured) if configured else Path(__file__).resolve().parent.parent / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


async def launch(
    playwright: Playwright, *, camera: bool = True, extra_args: Sequence[str] = ()
) -> Browser:
    args = [*QUIET_FLAGS, GRANT_CAMERA] if camera else list(QUIET_FLAGS)
    return await playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=[*args, *extra_args]
    )


@asynccontextmanager
async def persistent_browser(
    playwright: Playwright,
    *,
    camera: bool,
    executable: Path = CHROMIUM,
    extra_args: Sequence[str] = (),
) -> AsyncIterator[BrowserContext]:
    """A Chromium of its own on a fresh profile (for a browser that must differ in flags,
    or run through a wrapper such as ``ip netns exec``)."""
    args = [*QUIET_FLAGS, GRANT_CAMERA] if camera else list(QUIET_FLAGS)
    args += extra_args
    with tempfile.TemporaryDirectory(prefix="meshpeer-chromium-") as profile:
        context = await playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(executable),
            headless=True,
            args=args,
            viewport=DESKTOP,
        )
        try:
            yield context
        finally:
            await context.close()


class Transcript:
    """Every frame of a page's signaling sockets, both ways, relayed through Playwright; the
    page's side of the current socket can be cut while the server's side stays open, frames
    can be slipped to the page as if the server sent them, and new sockets can be refused
    (``blocked``: the network is down) without ever reaching the server."""

    def __init__(self) -> None:
        self.routes: list[WebSocketRoute] = []
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        self.blocked = False
        self.refused = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def relay(self, route: WebSocketRoute) -> None:
        if self.blocked:
            self.refused += 1
            task = asyncio.get_running_loop().create_task(route.close(code=4000, reason="down"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        server = route.connect_to_server()

        def from_page(message: str | bytes) -> None:
            self.sent.append(json.loads(message))
            server.send(message)

        def from_server(message: str | bytes) -> None:
            self.received.append(json.loads(message))
            route.send(message)

        route.on_message(from_page)
        server.on_message(from_server)
        route.on_close(lambda code, reason: None)  # closing the page's side keeps the other
        self.routes.append(route)

    def of_type(self, kind: str, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [frame for frame in frames if frame.get("type") == kind]

    def to_page(self, *frames: dict[str, Any]) -> None:
        """Hand ``frames`` to the page on its current socket, as if the server sent them."""
        for frame in frames:
            self.routes[-1].send(json.dumps(frame))


@dataclass
class RoomPage:
    """One person on the room page."""

    page: Page
    peer_id: str
    console: list[str] = field(default_factory=list)

    async def snapshot(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.page.evaluate("meshpeer.snapshot()")
        return result

    async def wait_joined(self) -> dict[str, Any]:
        async def joined() -> dict[str, Any] | None:
            # Not defined yet: the page's modules are still loading, or failed (the console
            # in the timeout's message says why).
            if not await self.page.evaluate("typeof meshpeer !== 'undefined'"):
                return None
            snap = await self.snapshot()
            return snap if snap["joined"] else None

        try:
            return await eventually(joined, seconds(10), f"{self.peer_id} to join")
        except Timeout as exc:
            raise Timeout(f"{exc}; the page's console: {self.console[-20:]}") from None

    async def wait_state(self, peer: str, state: str, within: float = 20) -> None:
        async def reached() -> bool:
            snap = await self.snapshot()
            return bool(snap["peers"].get(peer) == state)

        await eventually(reached, seconds(within), f"{self.peer_id}: {peer} {state}")

    async def inbound(self, peer: str, kind: str) -> dict[str, int]:
        stats: dict[str, int] | None = await self.page.evaluate(
            "([peer, kind]) => meshpeer.inbound(peer, kind)", [peer, kind]
        )
        return stats or {}

    async def video_size(self, peer: str) -> int:
        width: int = await self.page.evaluate(
            "(peer) => document.querySelector(`.tile[data-peer='${CSS.escape(peer)}'] video`)"
            "?.videoWidth ?? 0",
            peer,
        )
        return width

    async def wait_receiving(self, peer: str, kind: str = "video", within: float = 20) -> None:
        """Until ``peer``'s ``kind`` plays here: a picture on the tile, decoded frames rising."""
        counter = "framesDecoded" if kind == "video" else "packetsReceived"
        seen: list[int] = []

        async def rising() -> bool:
            if kind == "video" and await self.video_size(peer) <= 0:
                return False
            value = (await self.inbound(peer, kind)).get(counter, 0)
            seen.append(value)
            return len(seen) >= 2 and value > 0 and value > seen[-2]

        await eventually(
            rising, seconds(within), f"{self.peer_id} receiving {kind} from {peer}", 0.25
        )

    async def tile_names(self) -> list[str]:
        names: list[str] = await self.page.eval_on_selector_all(
            ".tile.remote", "tiles => tiles.map(t => t.dataset.peer)"
        )
        return names

    async def notices(self) -> list[str]:
        texts: list[str] = await self.page.eval_on_selector_all(
            ".notice p", "ps => ps.map(p => p.textContent)"
        )
        return texts

    async def leave(self) -> None:
        await self.page.click("#leave")

    def csp_violations(self) -> list[str]:
        """What the page's Content-Security-Policy refused (REPORT_CSP_VIOLATIONS)."""
        return [
            line
            for line in self.console
            if "csp-violation" in line or "Content Security Policy" in line
        ]


async def open_room_page(
    context: BrowserContext,
    base_url: str,
    *,
    peer_id: str,
    room: str | None = None,
    page: Page | None = None,
    token: str | None = None,
    send_id: bool = True,
    watch: bool = False,
) -> RoomPage:
    """Open the page as ``peer_id``; ``token`` adds ``?token=``, ``send_id=False`` leaves
    ``?id=`` out (the page then takes its name from the token, or makes one up), ``watch``
    adds ``?watch=1`` (no camera nor microphone: the page only receives)."""
    page = page or await context.new_page()
    params = {"id": peer_id} if send_id else {}
    if room is not None:
        params["room"] = room
    if token is not None:
        params["token"] = token
    if watch:
        params["watch"] = "1"
    room_page = RoomPage(page, peer_id)
    page.on("console", lambda msg: room_page.console.append(f"{msg.type}: {msg.text}"))
    page.on("pageerror", lambda exc: room_page.console.append(f"pageerror: {exc}"))
    await page.add_init_script(REPORT_CSP_VIOLATIONS)
    await page.goto(f"{base_url}/?{urlencode(params)}")
    return room_page
