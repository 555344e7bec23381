from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Playwright, async_playwright

from tests.browser.pages import DESKTOP, RoomPage, launch, open_room_page
from tests.support import RunningServer, running_server

OpenPage = Callable[..., Coroutine[Any, Any, RoomPage]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as pw:
        yield pw


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    """One Chromium per test module (with a fake camera); each test gets fresh contexts."""
    chromium = await launch(playwright)
    yield chromium
    await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def signaling() -> AsyncIterator[RunningServer]:
    async with running_server() as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(browser: Browser, signaling: RunningServer) -> AsyncIterator[OpenPage]:
    """``await open_page("alice", room="r")``: a person in a fresh browser profile."""
    contexts: list[BrowserContext] = []
    pages: list[RoomPage] = []

    async def open_(peer_id: str, room: str | None = None) -> RoomPage:
        context = await browser.new_context(viewport=DESKTOP)
        contexts.append(context)
        page = await open_room_page(context, signaling.http_url, peer_id=peer_id, room=room)
        pages.append(page)
        return page

    yield open_
    for context in contexts:
        await context.close()
    # An uncaught exception in the page is a bug whatever the test checked.
    crashes = [(p.peer_id, line) for p in pages for line in p.console if "pageerror" in line]
    assert not crashes, crashes
