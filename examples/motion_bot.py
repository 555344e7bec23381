"""Motion bot: watches every participant's video and shows the room where things move.

python examples/motion_bot.py ws://127.0.0.1:8080/ws lobby

Each participant's frames arrive as numpy arrays (``agent.video_frames()``, the newest frame
each time: a slow bot skips frames, it never falls behind). Motion is found by frame
differencing per track with OpenCV, in a worker thread (``asyncio.to_thread``): the event
loop, which carries signaling and every connection, never waits for it. The bot publishes
one picture to the whole room (``agent.publish`` of a ``VideoSource``): each participant's
frame with green boxes around what moved, labelled with the participant's name (a
``Mosaic`` lays the tiles out). It prints when motion starts and stops per participant.

On a server run with --auth-secret-file, give it a token for the ID "motion":
export MESHPEER_TOKEN=$(meshpeer token --secret-file FILE --room lobby --id motion)
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from peer import Agent, Mosaic, PeerLeft, ReceivedVideo, RemoteTrack, VideoSource

#: The access token of a server that requires one (meshpeer token ... --id motion).
TOKEN = os.environ.get("MESHPEER_TOKEN") or None

#: A pixel moved when its blurred grey level changed by more than this between frames.
THRESHOLD = 25
#: A region counts when it covers at least this share of the picture.
MIN_AREA = 0.002
#: Motion has stopped after this many seconds (of the sender's clock) without any.
QUIET = 1.0
GREEN = (0, 255, 0)

Image = npt.NDArray[np.uint8]


@dataclass
class Track:
    """What the detector keeps of one participant's track: its previous picture."""

    previous: Image | None = None
    moving: bool = False
    last_motion: float = 0.0


@dataclass
class Detector:
    """Frame differencing per track; runs in the worker thread, one frame at a time."""

    tracks: dict[RemoteTrack, Track] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # the loop forgets peers

    def forget(self, peer: str) -> None:
        with self.lock:
            self.tracks = {t: s for t, s in self.tracks.items() if t.peer != peer}

    def boxes(self, frame: ReceivedVideo) -> list[tuple[int, int, int, int]]:
        """The (x, y, w, h) of each moving region since this track's previous frame."""
        with self.lock:
            state = self.tracks.setdefault(frame.track, Track())
        grey = cv2.GaussianBlur(cv2.cvtColor(frame.array, cv2.COLOR_BGR2GRAY), (21, 21), 0)
        previous, state.previous = state.previous, grey
        if previous is None or previous.shape != grey.shape:
            return []
        changed = cv2.threshold(cv2.absdiff(previous, grey), THRESHOLD, 255, cv2.THRESH_BINARY)[1]
        changed = cv2.dilate(changed, None, iterations=2)
        contours, _ = cv2.findContours(changed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        least = MIN_AREA * grey.size
        return [cv2.boundingRect(c) for c in contours if cv2.contourArea(c) >= least]

    def changed(self, frame: ReceivedVideo, moving: bool) -> bool | None:
        """True when motion starts on this track, False when it stops, else None."""
        with self.lock:
            state = self.tracks.setdefault(frame.track, Track())
        if moving:
            state.last_motion = frame.timestamp
        if moving and not state.moving:
            state.moving = True
            return True
        if state.moving and frame.timestamp - state.last_motion > QUIET:
            state.moving = False
            return False
        return None


def annotate(frame: ReceivedVideo, boxes: list[tuple[int, int, int, int]]) -> Image:
    picture = frame.array.copy()
    for x, y, w, h in boxes:
        cv2.rectangle(picture, (x, y), (x + w, y + h), GREEN, 3)
    return picture


async def main(url: str, room: str, *, report: Callable[[str], None] = print) -> None:
    detector = Detector()
    mosaic = Mosaic(tile=(640, 480))  # one labelled tile per participant's track
    video = VideoSource(width=640, height=480, fps=15)

    def look(frame: ReceivedVideo) -> bool | None:
        """The worker thread's job: detect, draw, lay out and hand the picture to the source."""
        boxes = detector.boxes(frame)
        mosaic.put_frame(frame.track, annotate(frame, boxes))
        video.capture(mosaic.render())
        return detector.changed(frame, bool(boxes))

    def forget(event: object) -> None:
        if isinstance(event, PeerLeft):
            mosaic.remove_peer(event.peer)
            detector.forget(event.peer)

    try:
        async with Agent(url, room=room, peer_id="motion", token=TOKEN) as agent:
            agent.add_listener(forget)
            agent.publish(video)  # to everyone in the room, present and future
            async for frame in agent.video_frames():  # every participant's, as BGR arrays
                change = await asyncio.to_thread(look, frame)  # off the event loop
                if change is not None:
                    what = "started" if change else "stopped"
                    report(f"{frame.peer}: motion {what} at {frame.timestamp:.2f} s")
    finally:
        video.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
