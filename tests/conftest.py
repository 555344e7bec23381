from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

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
