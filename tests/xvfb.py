"""A private X server for the --display window tests, and the X tools that drive it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support import seconds

#: The screen of every test X server: what a full-screen window measures.
SCREEN = (1024, 768)


@contextmanager
def running_xvfb() -> Iterator[str]:
    """A private Xvfb on a free display number (it picks one itself: -displayfd), with
    xwininfo and xdotool at hand; yields the ``DISPLAY`` value."""
    if shutil.which("Xvfb") is None:
        pytest.fail("Xvfb is not installed (./dev setup installs xvfb)")
    for tool in ("xwininfo", "xdotool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (./dev setup installs x11-utils and xdotool)")
    read_fd, write_fd = os.pipe()
    screen = f"{SCREEN[0]}x{SCREEN[1]}x24"
    process = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", screen, "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        assert number, "Xvfb did not report its display number"
        yield f":{number}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=seconds(10))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def x_tool(display: str, *command: str) -> str:
    """Run an X client (xdotool, xwininfo) on ``display``; its stdout."""
    result = subprocess.run(
        command,
        env={**os.environ, "DISPLAY": display},
        capture_output=True,
        text=True,
        timeout=seconds(10),
    )
    return result.stdout
