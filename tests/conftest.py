from __future__ import annotations

import os
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


#: ``./dev test`` runs the suite in two phases: ``parallel`` (two workers, every test but the
#: ``solo`` ones) then ``solo`` (those alone, in one process). Unset: every test.
PHASE_ENV = "MESHPEER_TEST_PHASE"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent

    def rank(item: pytest.Item) -> int:
        name = item.path.relative_to(here).as_posix() if item.path.is_relative_to(here) else ""
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other test keeps its place
    phase = os.environ.get(PHASE_ENV, "")
    if phase in ("parallel", "solo"):
        wanted = phase == "solo"
        other = [item for item in items if (item.get_closest_marker("solo") is not None) != wanted]
        if other:  # counted as deselected in the summary: the other phase runs them
            config.hook.pytest_deselected(items=other)
            items[:] = [item for item in items if item not in other]
