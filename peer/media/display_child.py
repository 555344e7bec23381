"""The --display window's own process: shows BGR images read from stdin with OpenCV.

Run as a script (``python display_child.py TITLE``), never imported by the agent, so it
imports OpenCV and NumPy only. Two measured reasons for a separate process: with PyAV
imported before OpenCV (aiortc always imports it first), OpenCV's Qt window hangs in
``namedWindow``; and Qt aborts the whole process when its X server goes away, which must
not take the agent (and its recordings) down with it.

Protocol: stdin carries frames as ``<u32 height><u32 width>`` + ``height*width*3`` bytes;
stdout gets ``shown`` once, ``key m`` / ``key v`` when the user presses m (microphone) or v
(camera), for the agent to act on, ``fullscreen on|off`` after f (done here), then
``closed`` when the user presses q/Esc or closes the window. End of stdin closes the window.

Full screen is OpenCV's ``WND_PROP_FULLSCREEN``, which a window manager carries out; on an
X server without one (a kiosk, Xvfb) nothing would change, so the window is also resized
to the screen (read with Xlib through ctypes) when the property alone did not do it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import struct
import sys
from typing import BinaryIO

import cv2
import numpy as np
import numpy.typing as npt

HEADER = struct.Struct("<II")
_QUIT_KEYS = {ord("q"), ord("Q"), 27}
_AGENT_KEYS = {ord("m"): "m", ord("M"): "m", ord("v"): "v", ord("V"): "v"}
_FULLSCREEN_KEYS = {ord("f"), ord("F")}
_WM_WAITS = 8  # 50 ms each: how long a window manager gets to make the window full screen


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


def _screen_size() -> tuple[int, int] | None:
    """The X screen's (width, height), None when Xlib cannot tell."""
    try:
        x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    except OSError:
        return None
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    for name in ("XDefaultScreen", "XCloseDisplay"):
        getattr(x11, name).argtypes = [ctypes.c_void_p]
    for name in ("XDisplayWidth", "XDisplayHeight"):
        getattr(x11, name).argtypes = [ctypes.c_void_p, ctypes.c_int]
    display = x11.XOpenDisplay(None)
    if not display:
        return None
    try:
        screen = x11.XDefaultScreen(display)
        return int(x11.XDisplayWidth(display, screen)), int(x11.XDisplayHeight(display, screen))
    finally:
        x11.XCloseDisplay(display)


class _Window:
    """The window: sized to the image, or to the screen while full screen."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.fullscreen = False
        self.size: tuple[int, int] | None = None  # the image's (width, height)
        cv2.namedWindow(title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)

    def show(self, image: npt.NDArray[np.uint8]) -> None:
        size = (image.shape[1], image.shape[0])
        if size != self.size and not self.fullscreen:
            cv2.resizeWindow(self.title, *size)
        self.size = size
        cv2.imshow(self.title, image)

    def toggle_fullscreen(self) -> None:
        self.fullscreen = not self.fullscreen
        mode = cv2.WINDOW_FULLSCREEN if self.fullscreen else cv2.WINDOW_NORMAL
        cv2.setWindowProperty(self.title, cv2.WND_PROP_FULLSCREEN, mode)
        if not self.fullscreen:
            cv2.waitKey(50)  # let a window manager restore it first
            if self.size is not None:
                cv2.resizeWindow(self.title, *self.size)
            return
        screen = _screen_size()
        for _ in range(_WM_WAITS):  # a window manager's turn
            cv2.waitKey(50)
            if tuple(cv2.getWindowImageRect(self.title)[2:]) == screen:
                return
        if screen is None:
            return
        cv2.moveWindow(self.title, 0, 0)  # no window manager did it
        cv2.resizeWindow(self.title, *screen)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when to close us
    title = argv[1] if len(argv) > 1 else "meshpeer"
    stdin = sys.stdin.buffer
    window = _Window(title)
    shown = False
    try:
        while True:
            header = _read_exact(stdin, HEADER.size)
            if header is None:
                return 0
            height, width = HEADER.unpack(header)
            data = _read_exact(stdin, height * width * 3)
            if data is None:
                return 0
            image = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
            window.show(image)
            key = cv2.waitKey(1) & 0xFF
            if not shown:
                shown = True
                _say("shown")
            if key in _AGENT_KEYS:
                _say(f"key {_AGENT_KEYS[key]}")
            elif key in _FULLSCREEN_KEYS:
                window.toggle_fullscreen()
                _say(f"fullscreen {'on' if window.fullscreen else 'off'}")
            if key in _QUIT_KEYS or cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
                _say("closed")
                return 0
    finally:
        cv2.destroyAllWindows()
        cv2.waitKey(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
