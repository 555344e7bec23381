"""The ``--display`` window end to end: a ``meshpeer join --display`` process under a private
Xvfb, its keys pressed with xdotool, and what a second agent receives from it measured.

m mutes the microphone (bob hears silence, then the tone again), v stops the camera (bob
sees black, then the picture again), f makes the window the screen's size and back; the
process's own mosaic (its ``--snapshot``, the frame the window shows) marks bob, who sends
a tone, as speaking. A bot does the same with ``Agent.mute_audio``/``mute_video``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from peer.agent import Agent
from peer.media.levels import dbfs
from signaling.protocol import PeerId
from tests.peer.helpers import agents, join_command, small_media
from tests.support import REPO, RunningServer, eventually, seconds
from tests.xvfb import SCREEN, x_tool

#: 200 ms of blocks, all loud or all silent: the state is settled, not passing.
BLOCKS = 10
TONE_DB = -30.0  # the tone (amplitude 0.2) arrives at about -17 dBFS
SILENT_DB = -60.0  # "RMS ~0"
BLACK_LUMA = 10.0  # mean luma of a black picture (0 when decoded); the test card's is ~100
PICTURE_LUMA = 40.0
TILE = (320, 240)  # the window's mosaic tiles: alice's own first, then bob's


class Received:
    """What bob gets from alice: the loudness of the last audio blocks, the mean luma of
    the last pictures."""

    def __init__(self) -> None:
        self.db: collections.deque[float] = collections.deque(maxlen=BLOCKS)
        self.luma: collections.deque[float] = collections.deque(maxlen=3)

    async def listen(self, bob: Agent) -> None:
        async for block in bob.audio_frames("alice"):
            self.db.append(dbfs(block.array))

    async def watch(self, bob: Agent) -> None:
        async for picture in bob.video_frames("alice", format="gray"):
            self.luma.append(float(picture.array.mean()))

    def sound(self, test: Callable[[float], bool]) -> list[float] | None:
        recent = list(self.db)
        return recent if len(recent) == BLOCKS and all(map(test, recent)) else None

    def picture(self, test: Callable[[float], bool]) -> list[float] | None:
        recent = list(self.luma)
        return recent if len(recent) == self.luma.maxlen and all(map(test, recent)) else None


def _size(display: str, window: str) -> tuple[int, int]:
    info = x_tool(display, "xwininfo", "-id", window)
    width, height = (re.search(rf"{name}: (\d+)", info) for name in ("Width", "Height"))
    assert width and height, info
    return int(width[1]), int(height[1])


def _speaking(tile: np.ndarray) -> bool:  # type: ignore[type-arg]
    """The level colour along the tile's top edge (the ring) and at its left (the bar)."""
    b, g, r = (tile[..., i].astype(int) for i in range(3))
    green = (g > 170) & (b < 100) & (r < 100)
    return bool(green[:3, 60:260].mean() > 0.9 and green[120:200, :4].mean() > 0.9)


async def test_window_keys_mute_stop_and_go_full_screen(
    server: RunningServer, xvfb: str, tmp_path: Path
) -> None:
    log, snapshot = tmp_path / "alice.log", tmp_path / "alice.png"
    extra = ["--display", "--no-speaker", "--snapshot", str(snapshot), "--log-level", "INFO"]
    with log.open("wb") as log_file:
        alice = await asyncio.create_subprocess_exec(
            *join_command(server.ws_url, "alice", *extra),
            cwd=REPO, env={**os.environ, "DISPLAY": xvfb},
            stdout=asyncio.subprocess.PIPE, stderr=log_file,
        )  # fmt: skip
    received = Received()
    try:
        async with agents(server.ws_url, ["bob"]) as (bob,):
            readers = [
                asyncio.create_task(received.listen(bob)),
                asyncio.create_task(received.watch(bob)),
            ]
            try:
                found = await eventually(
                    lambda: x_tool(xvfb, "xdotool", "search", "--name", "^meshpeer$").split(),
                    seconds(30), "alice's window",
                )  # fmt: skip
                window = found[0]

                def key(name: str) -> None:
                    x_tool(xvfb, "xdotool", "key", "--window", window, name)

                tone, loud = (lambda db: db > TONE_DB), (lambda y: y > PICTURE_LUMA)
                silent, dark = (lambda db: db < SILENT_DB), (lambda y: y < BLACK_LUMA)
                steps = [  # the key pressed (none first), what bob then gets, for how long
                    ("", received.sound, tone, "the tone", 20),
                    ("", received.picture, loud, "a picture", 10),
                    ("m", received.sound, silent, "silence after m", 5),
                    ("m", received.sound, tone, "the tone after m again", 5),
                    ("v", received.picture, dark, "black after v", 5),
                    ("v", received.picture, loud, "the picture after v again", 5),
                ]
                figures = {}
                for name, measure, test, what, limit in steps:
                    pressed = time.monotonic()
                    if name:
                        key(name)
                    recent = await eventually(partial(measure, test), seconds(limit), what)
                    took = time.monotonic() - pressed  # to the last of the settled blocks
                    figures[what] = (round(min(recent), 1), round(max(recent), 1), round(took, 2))
                normal = _size(xvfb, window)
                key("f")
                await eventually(lambda: _size(xvfb, window) == SCREEN, seconds(5), "full screen")
                key("f")
                await eventually(
                    lambda: _size(xvfb, window) == normal, seconds(5), "the window's own size"
                )

                def bob_speaking() -> bool:
                    image = cv2.imread(str(snapshot)) if snapshot.exists() else None
                    if image is None or image.shape[1] < 2 * TILE[0]:
                        return False  # not yet written, or bob not in it yet
                    return _speaking(image[:, TILE[0] : 2 * TILE[0]])

                # Snapshots are written every 5 s: one after bob's tone began shows it.
                await eventually(bob_speaking, seconds(15), "bob's speaking ring in alice's mosaic")
            finally:
                for reader in readers:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
        print(
            f"dBFS and mean luma (the range of the last ones), seconds: {figures}; window {normal}"
        )
    finally:
        if alice.returncode is None:
            alice.terminate()
        stdout, _ = await asyncio.wait_for(alice.communicate(), seconds(20))
    lines = log.read_text(errors="replace")
    assert "alice: microphone off" in lines and "alice: microphone on" in lines, lines[-2000:]
    assert "alice: camera off" in lines and "alice: camera on" in lines, lines[-2000:]
    assert "full screen on" in lines and "full screen off" in lines, lines[-2000:]
    printed = stdout.decode(errors="replace")
    assert not re.search("^(key|fullscreen)|microphone|camera|full screen", printed, re.M), printed


async def test_a_bot_mutes_with_the_agent_api(server: RunningServer) -> None:
    """What the keys do, from code: muted before joining, the first picture is black; the
    sound and the picture come and go on ``mute_audio``/``mute_video``, on the same
    connection."""
    received = Received()
    async with agents(server.ws_url, ["bob"]) as (bob,):
        media = small_media("alice")
        alice = Agent(server.ws_url, room="test", peer_id="alice", media=media)
        alice.mute_video(True)
        readers = [
            asyncio.create_task(received.listen(bob)),
            asyncio.create_task(received.watch(bob)),
        ]
        try:
            await alice.join()
            await eventually(lambda: received.luma, seconds(20), "alice's first picture")
            assert received.luma[0] < BLACK_LUMA, received.luma
            await eventually(lambda: received.sound(lambda db: db > TONE_DB), seconds(10), "tone")
            assert alice.muted == {"video"}
            link = bob.links[PeerId("alice")]
            alice.mute_audio(True)
            alice.mute_video(False)
            await eventually(lambda: received.sound(lambda db: db < SILENT_DB), seconds(5), "mute")
            await eventually(
                lambda: received.picture(lambda y: y > PICTURE_LUMA), seconds(5), "the picture"
            )
            alice.mute_audio(False)
            await eventually(lambda: received.sound(lambda db: db > TONE_DB), seconds(5), "unmute")
            assert alice.muted == set() and bob.links[PeerId("alice")] is link
        finally:
            for reader in readers:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            await alice.leave()
            media.stop()
