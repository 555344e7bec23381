"""The example bots do what their one-line descriptions say."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from peer import AudioSource, LocalMedia, ReceivedVideo, SourceStopped, VideoSource
from peer.agent import Agent
from peer.events import DataReceived
from peer.media.sources import VideoSettings, open_local_media
from peer.signaling_client import JoinRefused
from signaling.auth import mint_token
from signaling.protocol import PeerId
from signaling.server import ServerConfig
from tests.media.clips import decoded_frames
from tests.peer.helpers import agents, frames_from
from tests.support import RunningServer, eventually, running_server, seconds

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def receiving(agent: Agent, peer: str) -> bool:
    return frames_from(agent, peer) > 3


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, seconds(10))


async def test_echo_bot_sends_each_peer_its_own_video(server: RunningServer) -> None:
    """Told apart by size: alice sends 160x120, bob 320x240, each must get its own back.

    The bot joins between them: it offers to alice and answers bob.
    """
    echo: asyncio.Task[None] | None = None
    sizes = {"alice": (160, 120), "bob": (320, 240)}
    medias = {
        name: open_local_media("synthetic", "none", label=name, settings=VideoSettings(w, h, 15))
        for name, (w, h) in sizes.items()
    }
    peers = [Agent(server.ws_url, room="test", peer_id=n, media=m) for n, m in medias.items()]
    try:
        alice, bob = peers
        await alice.join()
        echo = asyncio.create_task(load("echo_bot").main(server.ws_url, "test"))
        await eventually(lambda: PeerId("echo") in alice.members, seconds(10), "the bot's join")
        await bob.join()
        for agent in peers:
            await eventually(
                partial(receiving, agent, "echo"), seconds(15), f"echo to {agent.peer_id}"
            )
            track = agent.subscribe(PeerId("echo"), "video")
            assert track is not None
            frame = await asyncio.wait_for(track.recv(), seconds(5))
            track.stop()
            assert isinstance(frame, av.VideoFrame)
            assert (frame.width, frame.height) == sizes[agent.peer_id]
    finally:
        await asyncio.gather(*(a.leave() for a in peers))
        for media in medias.values():
            media.stop()
        if echo is not None:
            await stop(echo)


#: Seconds the recorder bot records once both files are open (scaled: a slow machine gets
#: longer to record what the counts below ask for).
RECORDED = 2.0


async def test_recorder_bot_records_everyone(server: RunningServer, tmp_path: Path) -> None:
    """Two senders (160x120 and 320x240, 15 fps, a tone): one file each, holding their own
    picture and sound, decoded frame by frame."""
    bot = asyncio.create_task(load("recorder_bot").main(server.ws_url, "test", str(tmp_path)))
    sizes = {"alice": (160, 120), "bob": (320, 240)}
    medias = {
        name: open_local_media("synthetic", "tone", label=name, settings=VideoSettings(w, h, 15))
        for name, (w, h) in sizes.items()
    }
    senders = [Agent(server.ws_url, room="test", peer_id=n, media=m) for n, m in medias.items()]
    try:
        await eventually(
            lambda: server.server.registry.counts()[1] == 1, seconds(10), "the bot's join"
        )
        for agent in senders:
            await agent.join()
        await eventually(
            lambda: all(PeerId("recorder") in a.links for a in senders),
            seconds(10),
            "the connections",
        )
        await eventually(
            lambda: len(files_in(tmp_path)) == 2, seconds(15), "a file for each sender"
        )
        await asyncio.sleep(seconds(RECORDED))
    finally:
        await asyncio.gather(*(agent.leave() for agent in senders))
        for media in medias.values():
            media.stop()
        await stop(bot)
    files = {name: [f for f in files_in(tmp_path) if name in f.name] for name in sizes}
    assert all(len(found) == 1 for found in files.values()), files
    for name, (path,) in files.items():
        counts = await asyncio.to_thread(decoded_frames, path)
        # Half of what RECORDED s hold (15 video frames a second, 50 of 20 ms sound).
        assert counts["video"] >= 15 * RECORDED / 2, (name, counts)
        assert counts["audio"] >= 50 * RECORDED / 2, (name, counts)
        assert (counts["width"], counts["height"]) == sizes[name], (name, counts)


async def test_numpy_streamer_sends_its_pictures_and_sound(server: RunningServer) -> None:
    """Its 640x480 moving picture and its sound reach a viewer."""
    streamer = asyncio.create_task(load("numpy_streamer").main(server.ws_url, "test"))
    viewer = Agent(server.ws_url, room="test", peer_id="viewer", stats_interval=None)
    try:
        await eventually(
            lambda: server.server.registry.counts()[1] == 1, seconds(10), "the streamer's join"
        )
        await viewer.join()
        await eventually(
            lambda: receiving(viewer, "numpy") and frames_from(viewer, "numpy", "audio") > 3,
            seconds(15),
            "video and audio from the streamer",
        )
        track = viewer.subscribe(PeerId("numpy"), "video")
        assert track is not None
        first, *_, last = [await asyncio.wait_for(track.recv(), seconds(5)) for _ in range(5)]
        track.stop()
        assert isinstance(first, av.VideoFrame) and isinstance(last, av.VideoFrame)
        assert (first.width, first.height) == (640, 480)
        assert (first.to_ndarray() != last.to_ndarray()).mean() > 0.5  # it moves
    finally:
        await viewer.leave()
        await stop(streamer)


async def test_synthetic_streamer_is_sent_nothing(server: RunningServer) -> None:
    """Its picture reaches a peer that sends video too, which sends it nothing back
    (the example joins with receive=False)."""
    streamer = asyncio.create_task(load("synthetic_streamer").main(server.ws_url, "test"))
    try:
        await eventually(
            lambda: server.server.registry.counts()[1] == 1, seconds(10), "the streamer's join"
        )
        async with agents(server.ws_url, ["alice"]) as (alice,):
            await eventually(
                lambda: receiving(alice, "streamer"), seconds(20), "the streamer's video"
            )
            link = alice.links[PeerId("streamer")]
            assert {t.currentDirection for t in link.pc.getTransceivers()} == {"recvonly"}
    finally:
        await stop(streamer)


def files_in(folder: Path) -> list[Path]:
    return list(folder.iterdir())


async def test_chat_bot_answers_each_message(server: RunningServer) -> None:
    bot = asyncio.create_task(load("chat_bot").main(server.ws_url, "test"))
    alice = Agent(server.ws_url, room="test", peer_id="alice", stats_interval=None)
    answers: list[object] = []
    alice.add_listener(lambda e: answers.append(e.data) if isinstance(e, DataReceived) else None)
    try:
        await eventually(
            lambda: server.server.registry.counts()[1] == 1, seconds(10), "the bot's join"
        )
        await alice.join()
        assert alice.send_data("hello", to="chatbot") == 1
        assert alice.send_data(bytes(100_000), to="chatbot") == 1
        await eventually(lambda: len(answers) == 2, seconds(10), "the bot's answers")
        assert answers == ["alice, you said: hello", "alice, you said: 100000 bytes"]
    finally:
        await alice.leave()
        await stop(bot)


async def test_the_bots_take_a_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a server that requires tokens: with MESHPEER_TOKEN the bot gets in, without it not."""
    secret = b"t" * 32
    config = ServerConfig(auth_secret=secret)
    async with running_server(config) as server:
        monkeypatch.delenv("MESHPEER_TOKEN", raising=False)
        with pytest.raises(JoinRefused, match="auth-required"):
            await load("echo_bot").main(server.ws_url, "lobby")
        monkeypatch.setenv("MESHPEER_TOKEN", mint_token(secret, "lobby", "echo"))
        echo = asyncio.create_task(load("echo_bot").main(server.ws_url, "lobby"))
        try:
            await eventually(
                lambda: server.server.registry.counts() == (1, 1), seconds(10), "the bot's join"
            )
        finally:
            await stop(echo)


@contextlib.asynccontextmanager
async def alice_with(
    server: RunningServer, bot: Coroutine[Any, Any, None], media: LocalMedia
) -> AsyncIterator[Agent]:
    """The bot runs; alice joins once it is in, sending ``media``; all end afterwards."""
    task = asyncio.create_task(bot)
    alice = Agent(server.ws_url, room="test", peer_id="alice", media=media, stats_interval=None)
    try:
        await eventually(
            lambda: server.server.registry.counts()[1] == 1, seconds(10), "the bot's join"
        )
        await alice.join()
        yield alice
    finally:
        await alice.leave()
        media.stop()
        await stop(task)


async def test_numpy_bot_shows_each_picture_back_inverted(server: RunningServer) -> None:
    """alice sends a plain grey 200 picture; the bot's, read back with video_frames, is its
    negative (55), scaled to 640x480."""
    source = VideoSource(width=320, height=240, fps=15)
    source.capture(np.full((240, 320, 3), 200, np.uint8))  # repeated until replaced
    levels: list[float] = []
    bot = load("numpy_bot").main(server.ws_url, "test")
    async with alice_with(server, bot, LocalMedia(video=source, audio=None)) as alice:
        frames = alice.video_frames("numpy-bot")
        async with asyncio.timeout(seconds(15)):
            async for frame in frames:  # black until the bot has inverted a picture
                assert frame.array.shape == (480, 640, 3)
                levels.append(float(frame.array.mean()))
                if abs(levels[-1] - 55) < 10:
                    break
        await frames.aclose()
    print(f"numpy bot: mean levels seen {[round(v) for v in levels]}")


def moving_block(moving: bool, index: int) -> npt.NDArray[np.uint8]:
    """A grey 320x240 picture with a white block: still, or sliding 8 px a frame."""
    image = np.full((240, 320, 3), 90, np.uint8)
    left = (8 * index) % 240 if moving else 40
    image[80:160, left : left + 80] = 255
    return image


def feed(source: VideoSource, stop: threading.Event, moving: threading.Event) -> None:
    """15 pictures a second until ``stop``; the block slides once ``moving`` is set."""
    index = 0
    start = time.monotonic()
    with contextlib.suppress(SourceStopped):
        while not stop.wait(max(0.0, start + index / 15 - time.monotonic())):
            source.capture(moving_block(moving.is_set(), index))
            index += 1


def annotated(frame: ReceivedVideo) -> bool:
    """The bot's green boxes are in the picture (the sender's own is grey and white)."""
    b, g, r = (frame.array[..., i].astype(int) for i in range(3))
    return int(((g > 180) & (r < 110) & (b < 110)).sum()) > 50


async def test_motion_bot_sees_the_block_move_and_shows_it_back(server: RunningServer) -> None:
    """A still picture reports nothing; once the block slides, the bot reports motion for
    that participant, and the picture it publishes (boxes drawn) reaches the sender."""
    reports: list[str] = []
    bot = load("motion_bot").main(server.ws_url, "test", report=reports.append)
    source = VideoSource(width=320, height=240, fps=15)
    halt, moving = threading.Event(), threading.Event()
    producer = threading.Thread(target=feed, args=(source, halt, moving), daemon=True)
    producer.start()
    try:
        async with alice_with(server, bot, LocalMedia(video=source, audio=None)) as alice:
            frames = alice.video_frames("motion")
            first = await asyncio.wait_for(anext(frames), seconds(15))  # the bot sees alice
            assert first.array.shape == (480, 640, 3)
            still = [await asyncio.wait_for(anext(frames), seconds(5)) for _ in range(10)]
            assert reports == [], "motion reported in a still picture"
            assert not any(annotated(f) for f in still)
            moving.set()
            began = time.monotonic()
            await eventually(lambda: bool(reports), seconds(10), "a motion report")
            after = time.monotonic() - began
            print(f"motion bot: {reports[0]!r} {after:.2f} s after the block moved")
            assert reports[0].startswith("alice: motion started"), reports
            async with asyncio.timeout(seconds(10)):
                async for frame in frames:
                    if annotated(frame):
                        break
            await frames.aclose()
    finally:
        halt.set()
        await asyncio.to_thread(producer.join)


#: The speech bot's own hysteresis delays nothing it reports (it names when the sound began
#: and ended on the sender's clock), so its times are the tone's within this margin (issue 18).
MARGIN = 0.3


def tone_bursts() -> npt.NDArray[np.float32]:
    """1 s of 440 Hz, 1 s of silence, 1 s of 440 Hz, 1 s of silence, at 16 kHz."""
    t = np.arange(16_000) / 16_000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    silence = np.zeros(16_000)
    return np.concatenate([tone, silence, tone, silence]).astype(np.float32)


async def test_speech_bot_hears_when_a_participant_speaks(server: RunningServer) -> None:
    """Tone 1 s, silence 1 s, tone 1 s: started/stopped/started/stopped 1 s apart (+-0.3 s)."""
    reports: list[str] = []
    bot = load("speech_bot").main(server.ws_url, "test", report=reports.append)
    # All 4 s go in at once and the source paces them itself: no feeding thread's jitter
    # (an underrun would be silence inside a tone) in the times measured.
    source = AudioSource(sample_rate=16_000, channels=1, buffer=5.0)
    async with alice_with(server, bot, LocalMedia(video=None, audio=source)):
        await eventually(lambda: "alice: listening" in reports, seconds(15), "the bot hearing")
        await asyncio.to_thread(source.capture, tone_bursts())
        await eventually(lambda: len(reports) >= 5, seconds(10), "four changes")
    changes = [re.fullmatch(r"alice: (\w+) speaking at ([\d.]+) s", r) for r in reports[1:]]
    assert all(changes), reports
    kinds = [m.group(1) for m in changes if m]
    times = [float(m.group(2)) for m in changes if m]
    assert kinds[:4] == ["started", "stopped", "started", "stopped"], reports
    gaps = [b - a for a, b in itertools.pairwise(times[:4])]
    print("speech bot: changes at", times, "gaps", [round(g, 3) for g in gaps])
    assert all(abs(gap - 1.0) <= MARGIN for gap in gaps), (times, gaps)
