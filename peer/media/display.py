"""The ``--display`` window: the mosaic shown on screen, from a child process.

The window lives in ``display_child.py`` (see there why: Qt's event loop and the agent's
must not share a process); here, one thread renders the mosaic and pipes it over, another
watches for the user's keys (m, v: ``on_key``; f, full screen, is the window's own) and for
the user closing the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from peer.media.errors import DisplayError
from peer.media.mosaic import Mosaic

log = logging.getLogger(__name__)

_FRAME_HEADER = struct.Struct("<II")  # as display_child.HEADER: height, width


def check_display(environ: dict[str, str] | None = None) -> str:
    """The X display to use; DisplayError when there is none (Qt would abort the process)."""
    env = os.environ if environ is None else environ
    display = env.get("DISPLAY", "")
    if not display:
        raise DisplayError("--display needs an X display, and DISPLAY is not set")
    if display.startswith(":"):
        number = display[1:].split(".")[0]
        if not Path(f"/tmp/.X11-unix/X{number}").exists():
            raise DisplayError(f"--display: no X server is running on display {display}")
    return display


class DisplayWindow:
    """The ``--display`` window: the mosaic shown ``fps`` times a second.

    The window lives in a child process (``display_child.py``: see there why); a thread
    here renders the mosaic and pipes it over, another watches for the user closing the
    window (q, Esc or the close button), which sets ``closed``: the agent leaves the room.
    The m and v keys go to ``on_key("m")`` / ``on_key("v")`` on the event loop (the runner
    mutes the microphone or the camera); without one they are ignored.
    """

    def __init__(self, mosaic: Mosaic, *, title: str = "meshpeer", fps: float = 10.0) -> None:
        self.mosaic = mosaic
        self.title = title
        self.fps = fps
        self.closed = asyncio.Event()
        self.on_key: Callable[[str], None] | None = None
        self.shown = threading.Event()  # set once the window has been drawn
        self._stop = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Opens the window; DisplayError when there is no X display."""
        check_display()
        env = dict(os.environ)
        fonts = Path("/usr/share/fonts/truetype/dejavu")
        if fonts.is_dir():  # silences Qt's "Cannot find font directory" warnings
            env.setdefault("QT_QPA_FONTDIR", str(fonts))
        self._loop = asyncio.get_running_loop()
        child = Path(__file__).with_name("display_child.py")
        try:
            self._process = subprocess.Popen(
                [sys.executable, str(child), self.title],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise DisplayError(f"cannot start the display window: {exc}") from exc
        self._threads = [
            threading.Thread(target=self._feed, name="display feed", daemon=True),
            threading.Thread(target=self._watch, name="display watch", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        log.info("display window %r opened", self.title)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._shut_down)

    def _shut_down(self) -> None:
        for thread in self._threads:
            thread.join(timeout=5)
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _feed(self) -> None:
        """Renders and sends frames until stopped or the window is gone; then ends stdin."""
        process = self._process
        if process is None or process.stdin is None:
            return
        period = 1 / self.fps
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                image = self.mosaic.render()
                height, width = image.shape[:2]
                process.stdin.write(_FRAME_HEADER.pack(height, width))
                process.stdin.write(image.tobytes())
                process.stdin.flush()
                self._stop.wait(max(0.0, period - (time.monotonic() - started)))
        except (BrokenPipeError, ValueError, OSError):
            pass  # the window process is gone; _watch reports it
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def _watch(self) -> None:
        process = self._process
        if process is None or process.stdout is None:
            return
        for line in process.stdout:
            word = line.decode(errors="replace").strip()
            if word == "shown":
                self.shown.set()
            elif word.startswith("key "):
                self._key(word.removeprefix("key "))
            elif word.startswith("fullscreen "):
                log.info("display window: full screen %s", word.removeprefix("fullscreen "))
            elif word == "closed":
                log.info("display window closed by the user")
                break
        if not self._stop.is_set():
            self._stop.set()  # stop feeding a window that is gone
            self._set_closed()

    def _key(self, key: str) -> None:
        on_key = self.on_key
        if on_key is None or self._loop is None:
            log.debug("display window: key %r ignored", key)
            return
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(on_key, key)

    def _set_closed(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self.closed.set)
