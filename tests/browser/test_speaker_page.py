"""A page's microphone heard on a desktop agent's speaker: Chromium's fake microphone (a
beep) to ``meshpeer join --speaker`` on a PulseAudio server of the test's own
(tests/pulse_server.py), read back from the null sink's monitor."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
from collections.abc import Iterator

import pytest

from tests.browser.conftest import OpenPage
from tests.peer.helpers import join_command, stop
from tests.pulse_server import PulseServer, onsets, pulse_server, recording
from tests.support import REPO, RunningServer, eventually, seconds

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow, pytest.mark.solo]


@pytest.fixture
def pulse() -> Iterator[PulseServer]:
    with pulse_server() as server:
        yield server


async def test_a_pages_fake_microphone_reaches_the_agents_speaker(
    pulse: PulseServer, signaling: RunningServer, open_page: OpenPage
) -> None:
    web = await open_page("web", room="desk")
    await web.wait_joined()
    command = join_command(
        signaling.ws_url, "desk", "--video", "none", "--audio", "none", "--speaker", "spk"
    )
    command[command.index("--room") + 1] = "desk"
    agent = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=pulse.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        with recording(pulse) as recorder:
            await web.wait_state("desk", "connected")
            # Chromium's fake microphone beeps about once a second: three beeps, apart.
            beeps = await eventually(
                lambda: (found := onsets(recorder.take(), gap=0.3)) and len(found) >= 3 and found,
                seconds(20),
                "three beeps of the page's microphone on the speaker",
            )
        gaps = [later - earlier for earlier, later in itertools.pairwise(beeps)]
        print(f"beeps on the speaker {len(beeps)}, apart (s): {[round(g, 2) for g in gaps]}")
        assert all(gap >= 0.3 for gap in gaps)
    finally:
        if agent.returncode is not None and agent.stderr is not None:
            print((await agent.stderr.read()).decode())
        await stop(agent)
