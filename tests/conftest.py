from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support import RunningServer, running_server
from tests.xvfb import running_xvfb


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    async with running_server() as running:
        yield running


@pytest.fixture
def xvfb() -> Iterator[str]:
    """A private X server's DISPLAY, for the --display window tests."""
    with running_xvfb() as display:
        yield display


#: The files that take longest (over 40 s each; most of it waiting on the product's timers or
#: on the 60 s windows the issues ask for), longest first. ``./dev test`` runs the suite on
#: two workers, one file at a time each (pytest-xdist, ``--dist loadfile``): starting these
#: first keeps one of them from being the last file left while the other worker idles.
LONGEST_FIRST = (
    "net/test_cut.py",
    "peer/test_frames.py",
    "peer/test_room_recorder.py",
    "test_wheel.py",
    "peer/test_faults.py",
    "net/test_loss.py",
    "peer/test_lipsync.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent

    def rank(item: pytest.Item) -> int:
        name = item.path.relative_to(here).as_posix() if item.path.is_relative_to(here) else ""
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its place
