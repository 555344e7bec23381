"""Shared encoding (issue 9) with real Chromium pages in the room: one agent encodes its
video and its tone once, and every receiver (pages and an aiortc agent) decodes that one
stream; a page joining late shows its first frame within 0.5 s of connecting (keyframe on
join).

The pages only watch (a browser without camera permission): on 2 shared cores, pages that
also sent their 640x480 camera to everyone would take the CPU the measurements need.
Measured numbers are printed (``-s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import av
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Playwright

from peer.agent import Agent
from peer.events import RemoteTrack
from peer.media.encoder_group import EncoderStats
from peer.media.sources import VideoSettings, open_local_media
from tests.browser.bots import running_bot
from tests.browser.conftest import OpenPage
from tests.browser.pages import RoomPage, launch
from tests.support import RunningServer, eventually, seconds

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

#: The sender's synthetic video: small, so the receivers and the browser fit on two cores.
VIDEO = VideoSettings(width=320, height=240, fps=15)
#: The issue's bound: first frame of a late receiver after its connection is up (scaled:
#: a busy machine delays the page's decoding, not the keyframe its join asks for).
FIRST_FRAME_BOUND = seconds(0.5)
#: Share of the frames the shared encoder made that every receiver decodes (9 of 15 fps;
#: a receiver handed a share of the stream, as a track split between connections is, gets
#: half or less).
DECODED_SHARE = 0.6


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    """Viewers: one Chromium without camera permission, so every page only receives."""
    chromium = await launch(playwright, camera=False)
    yield chromium
    await chromium.close()


@asynccontextmanager
async def sender(url: str, room: str) -> AsyncIterator[Agent]:
    """The agent whose video (320x240@15) and tone every receiver decodes; default,
    shared encoding."""
    media = open_local_media("synthetic", "tone", label="sender", settings=VIDEO)
    agent = Agent(url, room=room, peer_id="sender", media=media, stats_interval=None)
    try:
        await agent.join()
        yield agent
    finally:
        await agent.leave()
        media.stop()


class VideoSizes:
    """A FrameConsumer keeping the count and size of the video frames an agent decodes."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = {}
        self.size: dict[str, tuple[int, int]] = {}

    def put_frame(self, track: RemoteTrack, frame: av.AudioFrame | av.VideoFrame) -> None:
        if track.kind == "video" and isinstance(frame, av.VideoFrame):
            self.frames[track.peer] = self.frames.get(track.peer, 0) + 1
            self.size[track.peer] = (frame.width, frame.height)

    def track_ended(self, track: RemoteTrack) -> None:
        pass


#: Installed before the page's own code: each RTCPeerConnection records (epoch ms, the
#: page's clock) when it became connected and when getStats first showed a decoded video
#: frame (polled every 10 ms from connected on), with the keyframes decoded by then.
WATCH_DECODING = """
(() => {
  const Native = window.RTCPeerConnection;
  const now = () => performance.timeOrigin + performance.now();
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      const watch = { connected: null, decoded: null, keyFrames: 0, frames: 0 };
      this.__watch = watch;
      const poll = async () => {
        const until = now() + 10000;
        while (watch.decoded === null && this.connectionState === "connected" && now() < until) {
          const report = await this.getStats();
          report.forEach((s) => {
            if (s.type === "inbound-rtp" && s.kind === "video" && s.framesDecoded > 0) {
              watch.decoded ??= now();
              watch.keyFrames = s.keyFramesDecoded ?? 0;
              watch.frames = s.framesDecoded;
            }
          });
          if (watch.decoded === null) await new Promise((done) => setTimeout(done, 10));
        }
      };
      this.addEventListener("connectionstatechange", () => {
        if (this.connectionState === "connected" && watch.connected === null) {
          watch.connected = now();
          poll();
        }
      });
    }
  };
})();
"""


async def watch_decoding(page: Page) -> None:
    await page.add_init_script(WATCH_DECODING)


async def video_in(page: RoomPage, peer: str) -> dict[str, Any]:
    """The page's inbound video from ``peer`` (getStats): frames and keyframes decoded,
    the decoded size and codec, and the size its tile's <video> shows."""
    stats: dict[str, Any] = await page.page.evaluate(
        """async (peer) => {
            const out = { framesDecoded: 0, keyFramesDecoded: 0, frameWidth: 0,
                          frameHeight: 0, codec: null, videoWidth: 0, videoHeight: 0 };
            const video = document.querySelector(`.tile[data-peer='${CSS.escape(peer)}'] video`);
            out.videoWidth = video?.videoWidth ?? 0;
            out.videoHeight = video?.videoHeight ?? 0;
            const link = meshpeer.page.links.get(peer);
            if (!link || link.closed) return out;
            const report = await link.pc.getStats();
            report.forEach((s) => {
                if (s.type !== "inbound-rtp" || s.kind !== "video") return;
                out.framesDecoded += s.framesDecoded ?? 0;
                out.keyFramesDecoded += s.keyFramesDecoded ?? 0;
                out.frameWidth = s.frameWidth ?? 0;
                out.frameHeight = s.frameHeight ?? 0;
                out.codec = report.get(s.codecId)?.mimeType ?? null;
            });
            return out;
        }""",
        peer,
    )
    return stats


def groups(agent: Agent) -> dict[str, list[EncoderStats]]:
    by_kind: dict[str, list[EncoderStats]] = {"video": [], "audio": []}
    for stats in agent.encoder_stats():
        by_kind.setdefault(stats.kind, []).append(stats)
    return by_kind


async def wait_members(
    agent: Agent, members: int, *, one_encoder: bool = True
) -> dict[str, list[EncoderStats]]:
    """Until the agent's encoders of each kind send to ``members`` receivers in all; with
    ``one_encoder``, from a single encoder per kind (no second, lower-rate tier)."""
    found: dict[str, list[EncoderStats]] = {}

    async def counted() -> bool:
        found.update(groups(agent))
        return all(
            sum(s.members for s in found[k]) == members and (len(found[k]) == 1 or not one_encoder)
            for k in found
        )

    what = f"{'one encoder' if one_encoder else 'encoders'} per kind, {members} members"
    try:
        await eventually(counted, seconds(10), what)
    except AssertionError as error:
        links = {peer: link.state.value for peer, link in agent.links.items()}
        raise AssertionError(f"{error}; encoders {found}; links {links}") from None
    return found


def tiers(stats: list[EncoderStats]) -> list[tuple[int, int, int]]:
    """(tier, members, keyframes made) of each encoder of one kind."""
    return [(s.tier, s.members, s.keyframes) for s in stats]


async def test_pages_and_an_agent_decode_one_shared_encode(
    signaling: RunningServer, open_page: OpenPage
) -> None:
    """Two pages and an aiortc agent receive the sender: each decodes its 320x240 video,
    rising, and its sound; the sender runs ONE VP8 and ONE Opus encoder for all three (no
    second, lower-rate tier: on loopback no receiver is slow)."""
    room = "fan-pages"
    sizes = VideoSizes()
    async with (
        sender(signaling.ws_url, room) as source,
        running_bot(
            signaling.ws_url,
            "agent",
            room=room,
            video="none",
            audio="none",
            consumers=[sizes],
            stats_interval=None,
        ) as agent,
    ):
        pages = [await open_page(name, room=room) for name in ("page-a", "page-b")]
        for page in pages:
            await page.wait_state("sender", "connected")
            await page.wait_receiving("sender", "video")
            await page.wait_receiving("sender", "audio")
        await agent.wait_receiving("sender", "video")
        await agent.wait_receiving("sender", "audio")

        found = await wait_members(source, 3)
        video, audio = found["video"][0], found["audio"][0]
        assert (video.codec, video.members) == ("video/vp8", 3), found
        assert (audio.codec, audio.members) == ("audio/opus", 3), found

        # Over two seconds every receiver keeps decoding the one stream at its full size.
        start = [await video_in(page, "sender") for page in pages]
        agent_start = sizes.frames.get("sender", 0)
        encoded_start = video.frames
        began = time.monotonic()
        await asyncio.sleep(2.0)
        end = [await video_in(page, "sender") for page in pages]
        elapsed = time.monotonic() - began
        agent_end = sizes.frames.get("sender", 0)
        encoded = groups(source)["video"][0].frames - encoded_start
        rates = {
            page.peer_id: (after["framesDecoded"] - before["framesDecoded"]) / elapsed
            for page, before, after in zip(pages, start, end, strict=True)
        }
        rates["agent"] = (agent_end - agent_start) / elapsed
        print(
            f"\nshared encode: {encoded / elapsed:.1f} fps encoded once; decoded fps per "
            f"receiver {', '.join(f'{k} {v:.1f}' for k, v in rates.items())}"
        )
        for page, stats in zip(pages, end, strict=True):
            assert stats["codec"] == "video/VP8", (page.peer_id, stats)
            assert (stats["frameWidth"], stats["frameHeight"]) == (VIDEO.width, VIDEO.height)
            assert (stats["videoWidth"], stats["videoHeight"]) == (VIDEO.width, VIDEO.height)
        assert sizes.size["sender"] == (VIDEO.width, VIDEO.height)
        # Every receiver gets most of what was encoded (however much a busy machine let the
        # sender encode), none a share of it.
        assert min(rates.values()) >= DECODED_SHARE * encoded / elapsed, (rates, encoded)
        # Still one encoder each, still serving all three.
        after = groups(source)
        described = {
            k: [(s.codec, s.tier, s.members, f"{s.bitrate // 1000} kbps") for s in v]
            for k, v in after.items()
        }
        assert [(s.codec, s.members) for s in after["video"]] == [("video/vp8", 3)], described
        assert [(s.codec, s.members) for s in after["audio"]] == [("audio/opus", 3)], described


async def test_a_late_page_shows_its_first_frame_at_once(
    signaling: RunningServer, open_page: OpenPage
) -> None:
    """Pages join one after another while the shared stream runs (> 1 s after the last
    keyframe it made): each shows the sender's picture within 0.5 s of its connection to
    the sender becoming connected, from a keyframe the join asked for."""
    room = "fan-late"
    delays: list[float] = []
    async with (
        sender(signaling.ws_url, room) as source,
        running_bot(
            signaling.ws_url, "agent", room=room, video="none", audio="none", stats_interval=None
        ) as agent,
    ):
        early = await open_page("early", room=room)
        await early.wait_receiving("sender", "video")
        await agent.wait_receiving("sender", "video")
        for round_ in range(3):
            # Only the early page and the agent (the last late page is gone). The group may
            # run a second, lower-rate tier meanwhile (the first test checks that it does not
            # on loopback); where the late page lands does not matter here.
            await wait_members(source, 2, one_encoder=False)
            await asyncio.sleep(1.5)  # the stream runs on; its last keyframe is long gone
            before = groups(source)["video"]
            late = await open_page(f"late-{round_}", room=room, setup=watch_decoding)

            async def shown(page: RoomPage = late) -> dict[str, Any] | None:
                snap = await page.snapshot()
                return snap if "sender" in snap["firstFrameAt"] else None

            snap = await eventually(shown, seconds(20), f"late-{round_} showing the sender")

            async def decoded(page: RoomPage = late) -> dict[str, Any] | None:
                # getStats lags the <video> by a few tens of ms (Chromium caches reports).
                found: dict[str, Any] | None = await page.page.evaluate(
                    "meshpeer.page.links.get('sender')?.pc.__watch ?? null"
                )
                return found if found and found["decoded"] is not None else None

            watch = await eventually(decoded, seconds(5), f"late-{round_}'s getStats decoding")
            connected = snap["times"]["sender"]["connected"] / 1000
            first_shown = snap["firstFrameAt"]["sender"] / 1000
            delay = first_shown - connected
            delays.append(delay)
            after = groups(source)["video"]
            stats_delay = watch["decoded"] / 1000 - connected
            timeline = snap["times"]["sender"]
            print(
                f"\nlate-{round_}: first frame shown {delay * 1000:.0f} ms after connected"
                f" (decoded per getStats at {stats_delay * 1000:.0f} ms, "
                f"{watch['keyFrames']} keyframe(s) in {watch['frames']} frame(s)); "
                f"offer->connected {(timeline['connected'] - timeline['offer']):.0f} ms; "
                f"video encoders (tier, members, keyframes made) {tiers(before)} -> {tiers(after)}"
            )
            assert delay <= FIRST_FRAME_BOUND, (snap, watch)
            # Only a keyframe starts a VP8 picture; the join asked the shared encoder for one.
            assert watch["keyFrames"] >= 1, watch
            stats = await video_in(late, "sender")
            assert (stats["videoWidth"], stats["videoHeight"]) == (VIDEO.width, VIDEO.height)
            assert (stats["frameWidth"], stats["frameHeight"]) == (VIDEO.width, VIDEO.height)
            assert sum(s.members for s in after) == 3, after
            # The early receivers never stopped.
            await early.wait_receiving("sender", "video")
            await agent.wait_receiving("sender", "video")
            await late.leave()
    print(f"\nlate pages, first frame after connected: {[round(d * 1000) for d in delays]} ms")
