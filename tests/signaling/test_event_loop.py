"""The commands' event loop: uvloop by default, asyncio's on request."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from peer.cli import build_parser
from signaling import event_loop


async def running_loop_name() -> str:
    await asyncio.sleep(0)
    return event_loop.loop_name(asyncio.get_running_loop())


def test_run_on_uvloop_by_default() -> None:
    assert event_loop.run(running_loop_name()) == "uvloop"
    loop = event_loop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_run_on_asyncio_when_asked() -> None:
    assert event_loop.run(running_loop_name(), use_uvloop=False) == "asyncio"
    loop = event_loop.new_event_loop(use_uvloop=False)
    try:
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.parametrize("command", [["serve"], ["join", "ws://127.0.0.1:1/ws"], ["demo"]])
def test_every_long_running_command_takes_no_uvloop(command: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(command).no_uvloop is False
    assert parser.parse_args([*command, "--no-uvloop"]).no_uvloop is True
