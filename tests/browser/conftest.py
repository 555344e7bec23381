from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

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


@asynccontextmanager
async def page_opener(browser: Browser, base_url: str) -> AsyncIterator[OpenPage]:
    """``await open_("alice", room="r", token=..., setup=...)``: a person in a fresh browser
    profile; ``setup(page)`` runs before the page loads (to route or listen from the start).
    Closes every profile after, and fails on any uncaught exception in a page and on
    anything the page's Content-Security-Policy refused."""
    contexts: list[BrowserContext] = []
    pages: list[RoomPage] = []

    async def open_(
        peer_id: str,
        room: str | None = None,
        setup: Callable[[Page], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> RoomPage:
        context = await browser.new_context(viewport=DESKTOP)
        contexts.append(context)
        tab = await context.new_page()
        if setup is not None:
            await setup(tab)
        page = await open_room_page(
            context, base_url, peer_id=peer_id, room=room, page=tab, **kwargs
        )
        pages.append(page)
        return page

    try:
        yield open_
    finally:
        for context in contexts:
            await context.close()
    # An uncaught exception in the page is a bug whatever the test checked.
    crashes = [(p.peer_id, line) for p in pages for line in p.console if "pageerror" in line]
    assert not crashes, crashes
    # The policy refusing something the page does is a bug in the page or in the policy.
    refused = [(p.peer_id, line) for p in pages for line in p.csp_violations()]
    assert not refused, refused


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(browser: Browser, signaling: RunningServer) -> AsyncIterator[OpenPage]:
    """``await open_page("alice", room="r")``: a person in a fresh browser profile."""
    async with page_opener(browser, signaling.http_url) as open_:
        yield open_
