"""The room page against a server with access tokens: invitations in, refusals in plain words,
no retries that cannot help, and the ICE servers the peer-list brings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Request, Response, Route, WebSocketRoute

from signaling.auth import mint_token
from signaling.ice import IceServer
from signaling.server import ServerConfig
from signaling.turn import TurnMinter
from tests.browser.conftest import OpenPage, page_opener
from tests.browser.pages import (
    DESKTOP,
    SIGNALING_SOCKET,
    RoomPage,
    Transcript,
    artifacts_dir,
    open_room_page,
)
from tests.support import RunningServer, eventually, running_server, seconds

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

SECRET = b"meshpeer browser tests: 32+ bytes of secret"
#: Unreachable on loopback: harmless to a browser (it trickles, nothing waits on it), and
#: easy to recognise in an RTCPeerConnection's configuration.
STUN = IceServer("stun:127.0.0.1:9")
#: TURN with per-peer credentials minted by the server (nothing listens there either).
TURN = TurnMinter(
    (IceServer("turn:127.0.0.1:9?transport=udp"),), b"shared with coturn: 32+ bytes!!"
)

AUTH_REQUIRED = "This room needs an invitation link."
EXPIRED = "Your invitation link has expired."

OpenAuthPage = Callable[..., Coroutine[Any, Any, RoomPage]]


def token(peer_id: str, room: str, **kwargs: float) -> str:
    return mint_token(SECRET, room, peer_id, **kwargs)


@pytest_asyncio.fixture(loop_scope="module")
async def auth_server() -> AsyncIterator[RunningServer]:
    config = ServerConfig(auth_secret=SECRET, ice_servers=(STUN,), turn=TURN)
    async with running_server(config) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def open_auth(browser: Browser, auth_server: RunningServer) -> AsyncIterator[OpenAuthPage]:
    """``await open_auth("alice", room="r", token=...)``: a person on the auth server."""
    async with page_opener(browser, auth_server.http_url) as open_:
        yield open_


def ice_urls(servers: list[dict[str, Any]]) -> list[tuple[list[str], str | None]]:
    """RTCIceServer dictionaries as comparable (urls, username) pairs."""
    return [
        (s["urls"] if isinstance(s["urls"], list) else [s["urls"]], s.get("username"))
        for s in servers
    ]


async def pc_ice_urls(me: RoomPage, peer: str) -> list[tuple[list[str], str | None]]:
    """What the RTCPeerConnection to ``peer`` really uses."""
    used: list[Any] = await me.page.evaluate(
        """(peer) => meshpeer.page.links.get(peer).pc.getConfiguration().iceServers
            .map((s) => [[].concat(s.urls), s.username || null])""",
        peer,
    )
    return [(urls, username) for urls, username in used]


async def refusal(me: RoomPage) -> str:
    """The reason in the "Could not join" dialog, once it is open."""
    await me.page.wait_for_selector("#join-dialog[open]", timeout=seconds(10) * 1000)
    return await me.page.text_content("#join-reason") or ""


async def test_two_pages_with_invitations_see_each_other(
    auth_server: RunningServer, open_auth: OpenAuthPage
) -> None:
    """alice's link names her and the room; bob's link is the token alone (the page reads
    his name and room from it). The token goes in every join and to /config.json, never
    into the address the page offers to others, nor stays in its own."""
    alice_token = token("alice", "club")
    config: list[Response] = []

    async def watch_config(page: Page) -> None:
        page.on("response", lambda r: config.append(r) if "/config.json" in r.url else None)

    alice = await open_auth("alice", room="club", token=alice_token, setup=watch_config)
    snap = await alice.wait_joined()
    assert (snap["peerId"], snap["room"]) == ("alice", "club")
    assert [r.status for r in config] == [200]
    assert alice_token not in config[0].url
    empty = await alice.page.text_content("#empty") or ""
    assert "invitation link" in empty and alice_token not in empty
    assert await alice.page.query_selector("#empty a") is None  # no address that cannot work

    bob = await open_auth("bob", token=token("bob", "club"), send_id=False)
    snap = await bob.wait_joined()
    assert (snap["peerId"], snap["room"]) == ("bob", "club")
    for me, other in ((alice, bob), (bob, alice)):
        await me.wait_state(other.peer_id, "connected")
        await me.wait_receiving(other.peer_id, "video")
    assert await alice.notices() == [] and await bob.notices() == []
    assert auth_server.server.metrics.connections_total == 2

    # "Join again" after leaving, same name and room: the page's own address, and the token
    # this tab keeps for it.
    await alice.leave()
    await alice.page.wait_for_selector("#join-dialog[open]")
    async with alice.page.expect_navigation():
        await alice.page.click("#join-form button[type=submit]")
    assert "token" not in alice.page.url
    await alice.wait_joined()
    await bob.wait_state("alice", "connected")
    await bob.wait_receiving("alice", "video")


async def test_the_token_leaves_the_address_and_travels_in_a_header(
    auth_server: RunningServer, open_auth: OpenAuthPage
) -> None:
    """An invitation is read once: taken out of the address (so out of the history, bookmarks
    and screen shares), never in a Referer, sent to /config.json in ``Authorization``, and
    kept for this tab's address only: a reload still joins, another room opened in the tab
    does not get it."""
    invitation = token("fay", "club")
    requests: list[Request] = []

    async def watch(page: Page) -> None:
        page.on("request", lambda request: requests.append(request))

    fay = await open_auth("fay", room="club", token=invitation, setup=watch)
    await fay.wait_joined()
    assert "token" not in fay.page.url and invitation not in fay.page.url
    # The tab's about:blank, then the page: its first address replaced, not a third entry.
    assert await fay.page.evaluate("history.length") == 2
    for visit in (1, 2):
        configs = [r for r in requests if urlsplit(r.url).path == "/config.json"]
        assert len(configs) == visit
        assert invitation not in configs[-1].url
        sent = await configs[-1].all_headers()
        assert sent.get("authorization") == f"Bearer {invitation}"
        assert (await configs[-1].response()).status == 200  # type: ignore[union-attr]
        for request in requests:
            headers = await request.all_headers()
            assert invitation not in headers.get("referer", ""), request.url
        if visit == 1:
            await fay.page.reload()
            await fay.wait_joined()
    assert "token" not in fay.page.url
    assert auth_server.server.metrics.joins_total == 2
    # The tab's next address is another room: the invitation does not follow.
    await fay.page.goto(f"{auth_server.http_url}/?{urlencode({'room': 'lobby', 'id': 'fay'})}")
    reason = await refusal(fay)
    assert reason.startswith(AUTH_REQUIRED), reason


async def test_page_without_invitation_says_so_and_does_not_retry(
    auth_server: RunningServer, open_auth: OpenAuthPage
) -> None:
    sockets: list[str] = []
    config: list[int] = []

    async def count(page: Page) -> None:
        page.on("websocket", lambda ws: sockets.append(ws.url))
        page.on("response", lambda r: config.append(r.status) if "/config.json" in r.url else None)

    page = await open_auth("carol", room="club", setup=count)

    reason = await refusal(page)
    assert reason.startswith(AUTH_REQUIRED), reason
    assert "“club”" in reason
    assert await page.notices() == [reason]  # the refusal only: nothing about config.json's 401
    assert await page.page.text_content("#status") == "Not in the room"
    assert config == [401]
    await page.page.screenshot(path=artifacts_dir() / "page-auth-required.png")
    await asyncio.sleep(seconds(2))  # the first retry would come after 0.25 s
    assert len(sockets) == 1, sockets
    assert auth_server.server.metrics.connections_total == 1
    assert await page.notices() == [reason]
    assert not [line for line in page.console if "pageerror" in line]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("expired", EXPIRED),
        ("other-room", "Your invitation link is not valid for room “club” under the name “dave”."),
        ("other-name", "Your invitation link is not valid for room “club” under the name “dave”."),
        ("forged", "Your invitation link is not valid for room “club” under the name “dave”."),
    ],
)
async def test_refused_invitation_is_explained(
    case: str, expected: str, auth_server: RunningServer, open_auth: OpenAuthPage
) -> None:
    links = {
        "expired": token("dave", "club", ttl=60, now=time.time() - 3600),
        "other-room": token("dave", "elsewhere"),
        "other-name": token("erin", "club"),
        "forged": mint_token(b"not the server's secret, 32+ bytes long", "club", "dave"),
    }
    page = await open_auth("dave", room="club", token=links[case])
    reason = await refusal(page)
    assert reason.startswith(expected), reason
    assert reason in await page.notices()
    assert not any("Lost the connection" in text for text in await page.notices())
    await asyncio.sleep(seconds(1))
    assert auth_server.server.metrics.connections_total == 1  # no retry


async def test_ice_servers_from_peer_list_reach_the_connections(
    auth_server: RunningServer, open_auth: OpenAuthPage
) -> None:
    """The peer-list's iceServers replace /config.json's (here a decoy), for every connection,
    and again after a rejoin, which keeps the token and brings a fresh peer-list: the working
    connection stays as it is, the next one made has the fresh credentials."""
    decoy = [{"urls": "stun:127.0.0.2:9"}]

    async def fake_config(route: Route) -> None:
        await route.fulfill(json={"iceServers": decoy})

    transcript = Transcript()

    async def intercept(page: Page) -> None:
        await page.route("**/config.json*", fake_config)
        await page.route_web_socket(SIGNALING_SOCKET, transcript.relay)

    one_token = token("one", "ice")
    one = await open_auth("one", room="ice", token=one_token, setup=intercept)
    await one.wait_joined()
    two = await open_auth("two", room="ice", token=token("two", "ice"))
    await one.wait_state("two", "connected")
    await two.wait_state("one", "connected")

    lists = transcript.of_type("peer-list", transcript.received)
    assert len(lists) == 1 and lists[0].get("iceServers"), lists
    from_server = ice_urls(lists[0]["iceServers"])
    assert from_server[0] == (["stun:127.0.0.1:9"], None)
    (turn_urls, username), *_ = from_server[1:]
    assert turn_urls == ["turn:127.0.0.1:9?transport=udp"]
    assert username and username.endswith(":one")  # minted for this peer
    assert await pc_ice_urls(one, "two") == from_server  # not the decoy
    snap = await one.snapshot()
    assert snap["iceSource"] == "peer-list"
    assert ice_urls(snap["iceServers"]) == from_server
    # The answerer's connection has its own credentials (it learnt them from its peer-list).
    theirs = await pc_ice_urls(two, "one")
    assert [urls for urls, _ in theirs] == [urls for urls, _ in from_server]
    assert (theirs[1][1] or "").endswith(":two")

    await one.page.evaluate("meshpeer.page.links.get('two').pc.marked = true")
    await transcript.routes[0].close(code=4000, reason="network gone")  # server side stays

    async def rejoined() -> bool:
        return len(transcript.routes) == 2 and bool((await one.snapshot())["joined"])

    await eventually(rejoined, seconds(10), "the page to rejoin on a new socket")
    joins = transcript.of_type("join", transcript.sent)
    assert len(joins) == 2
    assert joins[0]["token"] == joins[1]["token"] == one_token  # kept for the rejoin
    assert joins[1].get("resumeToken") == lists[0]["resumeToken"]
    await one.wait_state("two", "connected")
    lists = transcript.of_type("peer-list", transcript.received)
    assert len(lists) == 2 and lists[1].get("iceServers")
    assert await one.page.evaluate("meshpeer.page.links.get('two').pc.marked === true")
    assert await pc_ice_urls(one, "two") == from_server  # kept, with its credentials
    assert ice_urls((await one.snapshot())["iceServers"]) == ice_urls(lists[1]["iceServers"])
    await one.page.evaluate("meshpeer.page.restartLink('two')")  # the Retry button
    await one.wait_state("two", "connected")
    assert await pc_ice_urls(one, "two") == ice_urls(lists[1]["iceServers"])
    await one.wait_receiving("two", "video")
    assert await one.notices() == []
    assert auth_server.server.metrics.connections_total == 3  # one, two, one's rejoin


async def test_invitation_links_never_carry_the_token(open_page: OpenPage) -> None:
    """The page's pure helpers for tokens, run in the browser that uses them."""
    page = (await open_page("unit")).page
    jwt = token("zoë", "lobby")
    result = await page.evaluate(
        """async (jwt) => {
            const params = await import('/static/params.js');
            const messages = await import('/static/messages.js');
            const href = `http://h/?room=lobby&id=zo%C3%AB&watch=1&token=${jwt}#x`;
            return {
                full: params.readParams(`?room=lobby&id=ann&token=%20${jwt}%20`),
                fromToken: params.readParams(`?token=${jwt}`),
                addressWins: params.readParams(`?room=r&id=bob&token=${jwt}`),
                junk: params.readParams('?token=not-a-jwt'),
                none: params.readParams('?token=').token,
                claims: params.tokenClaims(jwt),
                invite: params.inviteUrl(href, 'lobby'),
                other: params.pageUrl(href, {room: 'c', peerId: 'd'}),
                config: params.configUrl(href),
                plainConfig: params.configUrl('http://h/x/?room=a'),
                ws: params.signalingUrl(href),
                final: messages.FINAL_CLOSE_CODES.has(4407),
                texts: ['auth-required', 'token-expired', 'invalid-token'].map(
                    (code) => messages.serverErrorText(code, 'x', {peerId: 'ann', room: 'r'})),
                close: messages.closeText(4407),
            };
        }""",
        jwt,
    )
    assert result["full"] == {
        "room": "lobby",
        "peerId": "ann",
        "chosenId": True,
        "watch": False,
        "token": jwt,
    }
    assert result["fromToken"] == {
        "room": "lobby",
        "peerId": "zoë",
        "chosenId": True,
        "watch": False,
        "token": jwt,
    }
    assert (result["addressWins"]["room"], result["addressWins"]["peerId"]) == ("r", "bob")
    assert result["junk"]["token"] == "not-a-jwt" and not result["junk"]["chosenId"]
    assert result["none"] is None
    assert result["claims"]["sub"] == "zoë" and result["claims"]["room"] == "lobby"
    assert result["invite"] == "http://h/?room=lobby"
    assert result["other"] == "http://h/?watch=1&room=c&id=d#x"
    assert jwt not in result["other"] and jwt not in result["invite"]
    assert result["config"] == "http://h/config.json"  # the token goes in a header
    assert result["plainConfig"] == "http://h/x/config.json"
    assert result["ws"] == "ws://h/ws"
    assert result["final"] is True
    assert result["texts"][0].startswith(AUTH_REQUIRED) and "“r”" in result["texts"][0]
    assert result["texts"][1].startswith(EXPIRED)
    assert result["texts"][2].startswith("Your invitation link is not valid for room “r”")
    assert "invitation" in result["close"]


async def test_refusal_is_final_even_when_a_proxy_loses_the_close_code(
    auth_server: RunningServer, open_auth: OpenAuthPage
) -> None:
    """The error frame alone decides: a middlebox that turns 4407 into another code must not
    make the page retry a token that cannot work."""
    routes: list[WebSocketRoute] = []

    def relay(route: WebSocketRoute) -> None:
        server = route.connect_to_server()
        server.on_close(lambda code, reason: route.close(code=4000, reason="proxy"))
        routes.append(route)

    async def proxy(page: Page) -> None:
        await page.route_web_socket(SIGNALING_SOCKET, relay)

    page = await open_auth("erin", room="club", token=token("erin", "club", ttl=-60), setup=proxy)
    reason = await refusal(page)
    assert reason.startswith(EXPIRED), reason
    await asyncio.sleep(seconds(2))
    assert len(routes) == 1
    assert auth_server.server.metrics.connections_total == 1
    assert await page.page.text_content("#status") == "Not in the room"


async def test_fresh_turn_credentials_reach_connections_made_later(browser: Browser) -> None:
    """A long meeting: before the peer-list's TURN credentials expire the server sends fresh
    ones (``ice-servers``), and a connection made after that (a late joiner) uses them."""
    minter = TurnMinter(TURN.urls, TURN.secret, ttl=4)  # refreshed every 2 s
    config = ServerConfig(auth_secret=SECRET, turn=minter)
    async with running_server(config) as server:
        contexts = [await browser.new_context(viewport=DESKTOP) for _ in range(2)]
        try:
            early = await open_room_page(
                contexts[0], server.http_url, peer_id="early", room="long",
                token=token("early", "long"),
            )  # fmt: skip
            first = await early.wait_joined()
            assert first["iceSource"] == "peer-list"
            (first_turn,) = first["iceServers"]

            async def refreshed() -> dict[str, Any] | None:
                snap = await early.snapshot()
                return snap if snap["iceSource"] == "ice-servers" else None

            snap = await eventually(refreshed, seconds(6), "fresh TURN credentials")
            (fresh,) = snap["iceServers"]
            expiry = int(fresh["username"].split(":")[0])
            assert expiry > int(first_turn["username"].split(":")[0])
            assert fresh["credential"] != first_turn["credential"]
            late = await open_room_page(
                contexts[1], server.http_url, peer_id="late", room="long",
                token=token("late", "long"),
            )  # fmt: skip
            await late.wait_joined()
            await eventually(
                lambda: early.page.evaluate("() => meshpeer.page.links.has('late')"),
                seconds(10),
                "the late joiner's connection",
            )
            used = await pc_ice_urls(early, "late")
            (_, username), *_ = used
            assert username is not None and int(username.split(":")[0]) >= expiry
        finally:
            for context in contexts:
                await context.close()
