"""The --display window's own process: shows BGR images read from stdin with OpenCV.

Run as a script (``python display_child.py TITLE``), never imported by the agent, so it
imports OpenCV and NumPy only. Two measured reasons for a separate process: with PyAV
imported before OpenCV (aiortc always imports it first), OpenCV's Qt window hangs in
``namedWindow``; and Qt aborts the whole process when its X server goes away, which must
not take the agent (and its recordings) down with it.

Protocol: stdin carries frames as ``<u32 height><u32 width>`` + ``height*width*3`` bytes;
stdout gets ``shown`` once, then ``closed`` when the user presses q/Esc or closes the
window. End of stdin closes the window.
"""

from __future__ import annotations

import signal
import struct
import sys
from typing import BinaryIO

import cv2
import numpy as np

HEADER = struct.Struct("<II")
_QUIT_KEYS = {ord("q"), ord("Q"), 27}


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


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when to close us
    title = argv[1] if len(argv) > 1 else "meshpeer"
    stdin = sys.stdin.buffer
    cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
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
            cv2.imshow(title, image)
            key = cv2.waitKey(1) & 0xFF
            if not shown:
                shown = True
                _say("shown")
            if key in _QUIT_KEYS or cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
                _say("closed")
                return 0
    finally:
        cv2.destroyAllWindows()
        cv2.waitKey(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
