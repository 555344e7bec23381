"""Numpy streamer: pictures and a sine made with numpy in a plain thread, sent to the room.

python examples/numpy_streamer.py ws://127.0.0.1:8080/ws lobby

The thread calls ``VideoSource.capture`` and ``AudioSource.capture``, which never wait for
the agent's event loop; the sources pace what goes out (30 fps, 20 ms of sound).

On a server run with --auth-secret-file, give it a token for the ID "numpy":
export MESHPEER_TOKEN=$(meshpeer token --secret-file FILE --room lobby --id numpy)
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import numpy as np

from peer import Agent, AudioSource, LocalMedia, SourceStopped, StatsReport, VideoSource

#: The access token of a server that requires one (meshpeer token ... --id numpy).
TOKEN = os.environ.get("MESHPEER_TOKEN") or None

WIDTH, HEIGHT, FPS = 640, 480, 30
SAMPLE_RATE, PIECE = 16_000, 320  # 20 ms of sound per capture
ROWS, COLUMNS = np.mgrid[0:HEIGHT, 0:WIDTH]


def picture(index: int) -> np.ndarray:
    """A moving colour gradient with a white square bouncing across it (BGR)."""
    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[..., 0] = (COLUMNS + 4 * index) % 256
    image[..., 1] = (ROWS + 2 * index) % 256
    image[..., 2] = 128
    side = 80
    left = abs((8 * index) % (2 * (WIDTH - side)) - (WIDTH - side))
    top = (HEIGHT - side) // 2
    image[top : top + side, left : left + side] = 255
    return image


def generate(video: VideoSource, audio: AudioSource, stop: threading.Event) -> None:
    """The producer: one picture per frame, one 20 ms piece of a 440 Hz sine per 20 ms."""
    start = time.monotonic()
    frames = pieces = 0
    t = np.arange(PIECE) / SAMPLE_RATE
    try:
        while not stop.is_set():
            now = time.monotonic() - start
            while frames <= now * FPS:
                video.capture(picture(frames))
                frames += 1
            while pieces <= now * SAMPLE_RATE / PIECE:
                phase = 2 * np.pi * 440 * (t + pieces * PIECE / SAMPLE_RATE)
                audio.capture((0.3 * np.sin(phase)).astype(np.float32))
                pieces += 1
            time.sleep(0.005)
    except SourceStopped:
        pass  # the agent is gone


async def main(url: str, room: str) -> None:
    video = VideoSource(width=WIDTH, height=HEIGHT, fps=FPS)
    audio = AudioSource(sample_rate=SAMPLE_RATE, channels=1)
    media = LocalMedia(video=video, audio=audio)
    stop = threading.Event()
    producer = threading.Thread(target=generate, args=(video, audio, stop), daemon=True)
    producer.start()
    try:
        async with Agent(url, room=room, peer_id="numpy", token=TOKEN, media=media) as agent:
            async for event in agent.events():
                if isinstance(event, StatsReport):
                    print(" | ".join(s.line() for s in event.peers) or "waiting for viewers")
    finally:
        stop.set()
        media.stop()
        await asyncio.to_thread(producer.join)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
