"""The page's `meshpeer` data channel (PROTOCOL.md section 16) and its chat panel, in real
Chromium: framing and flow control, text through the panel, a megabyte of bytes, a peer
leaving half way through a message, and the panel on desktop and phone; then the same
between the page and the Python agent."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiortc import RTCDataChannel
from playwright.async_api import Page

from peer import events as ev
from peer.datachannel import MESHPEER
from signaling.protocol import PeerId
from tests.browser.bots import Bot, running_bot
from tests.browser.conftest import OpenPage
from tests.browser.pages import (
    DESKTOP,
    PHONE,
    SIGNALING_SOCKET,
    RoomPage,
    Transcript,
    artifacts_dir,
)
from tests.support import RunningServer, eventually, seconds

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

PIECE = 16383  # payload bytes per binary frame
MEGABYTE = 1_000_000

#: A network that takes `n` more data channel frames after ``stallAfter(n)``, then nothing:
#: ``bufferedAmount`` reads 1 GiB from then on, so the page waits for ``bufferedamountlow``
#: with part of a message sent (what a peer on a slow link sees, at a fixed point).
STALL = """(() => {
    const proto = RTCDataChannel.prototype;
    const send = proto.send;
    const buffered = Object.getOwnPropertyDescriptor(proto, 'bufferedAmount').get;
    let budget = Infinity;
    window.stallAfter = (frames) => { budget = frames; };
    proto.send = function (data) { budget -= 1; return send.call(this, data); };
    Object.defineProperty(proto, 'bufferedAmount', {
        configurable: true,
        get() { return budget <= 0 ? 2 ** 30 : buffered.call(this); },
    });
})()"""

#: The framing module and the channel's flow control, against a stand-in RTCDataChannel
#: whose buffer only drains when the script says so.
MODULES = """async () => {
    const chunks = await import('/static/chunks.js');
    const { MeshChannel } = await import('/static/channel.js');
    const tick = () => new Promise((resolve) => setTimeout(resolve, 0));
    const size = (f) => typeof f === 'string' ? new TextEncoder().encode(f).length : f.length;
    const kinds = (m) => [...chunks.frames(m)].map((f) =>
        typeof f === 'string' ? `text:${size(f)}` : `${f[0]}:${f.length}`);
    const join = (m, r = new chunks.Reassembler()) => {
        let last = null;
        for (const f of chunks.frames(m)) last = r.push(typeof f === 'string' ? f : f.buffer);
        return last;
    };
    const out = {};
    out.kinds = {
        short: kinds('hi'), empty: kinds(''), fullText: kinds('a'.repeat(16384)),
        longText: kinds('a'.repeat(16385)), wide: kinds('é'.repeat(8192)),
        wider: kinds('é'.repeat(8193)), bytes: kinds(new Uint8Array(16383)),
        over: kinds(new Uint8Array(16384)), none: kinds(new Uint8Array(0)),
    };
    const big = Uint8Array.from({ length: MEGABYTE }, (_, i) => (i * 7919) % 251);
    const back = new Uint8Array(join(big).message);
    out.binaryRoundTrip = back.length === big.length && back.every((v, i) => v === big[i]);
    const text = 'é'.repeat(8193) + '€x';  // the cut falls inside a character
    out.textRoundTrip = join(text).message === text;
    const small = new chunks.Reassembler(20000);
    out.overLimit = [...chunks.frames(new Uint8Array(40000))]
        .map((f) => small.push(f.buffer)).map((r) => r && (r.dropped ? 'dropped' : 'message'));
    out.afterLimit = new Uint8Array(join(new Uint8Array([1, 2, 3]), small).message).length;
    const r = new chunks.Reassembler();
    out.unknown = r.push(new Uint8Array([9, 1]).buffer).dropped;
    out.pieceStarted = r.push(new Uint8Array([1, 10, 11]).buffer);
    out.mixed = r.push(new Uint8Array([4, 65]).buffer).dropped;
    out.held = r.joining;
    out.finished = Array.from(new Uint8Array(r.push(new Uint8Array([2, 12]).buffer).message));
    r.push(new Uint8Array([3, 65]).buffer);
    out.discarded = r.discard();
    out.empty = r.push(new ArrayBuffer(0)).dropped;

    class FakeChannel extends EventTarget {
        constructor(state = 'connecting') {
            super();
            Object.assign(this, { label: 'meshpeer', readyState: state, sent: [] });
            this.bufferedAmount = 0;
        }
        send(f) { this.sent.push(f); this.bufferedAmount += size(f); }
        open() { this.readyState = 'open'; this.dispatchEvent(new Event('open')); }
        drain() { this.bufferedAmount = 0; this.dispatchEvent(new Event('bufferedamountlow')); }
        shut() { this.readyState = 'closed'; this.dispatchEvent(new Event('close')); }
    }
    const make = (opts = {}) => {
        const seen = { dropped: [], got: [] };
        const channel = new MeshChannel({ peerId: 'x', onMessage: (m) => seen.got.push(m),
            onDropped: (d) => seen.dropped.push(d), ...opts });
        return [channel, seen];
    };

    // Before the channel opens: 64 wait, the 65th is dropped; then all go, in order.
    const [early, earlySeen] = make();
    const fake = new FakeChannel();
    early.attach(fake);
    const waits = Array.from({ length: 65 }, (_, i) => early.send(`m${i}`));
    out.queueFull = earlySeen.dropped.slice();
    fake.open();
    const results = await Promise.all(waits);
    out.early = { sent: results.filter(Boolean).length, count: fake.sent.length,
        first: fake.sent[0], last: fake.sent.at(-1) };

    // Flow control: never more than 1 MiB in the channel; a message behind waits its turn.
    fake.sent = [];
    const bigSend = early.send(new Uint8Array(3 * 1024 * 1024));
    const after = early.send('after');
    await tick();
    out.stalledAt = fake.bufferedAmount;
    let settled = false;
    bigSend.then(() => { settled = true; });
    let drains = 0;
    for (; drains < 20 && !settled; drains++) { fake.drain(); await tick(); }
    out.flow = { drains, big: await bigSend, after: await after, last: fake.sent.at(-1) };

    // Frames in are joined; a message cut by the close is dropped quietly.
    for (const f of chunks.frames(new Uint8Array(40000))) {
        fake.dispatchEvent(new MessageEvent('message', { data: f.buffer }));
    }
    fake.dispatchEvent(new MessageEvent('message', { data: 'hello' }));
    out.received = earlySeen.got.map((m) => typeof m === 'string' ? m : m.byteLength);
    fake.dispatchEvent(new MessageEvent('message', { data: new Uint8Array([1, 5]).buffer }));
    out.joiningBeforeClose = early.joining;

    // Closing drops the message half written and the one behind it, and says so once.
    fake.drain();
    const cut = early.send(new Uint8Array(2 * 1024 * 1024));
    const behind = early.send('behind');
    await tick();
    fake.shut();
    out.cut = [await cut, await behind, early.joining];
    out.afterClose = await early.send('x');
    out.closeDrops = earlySeen.dropped.slice(1);

    // Nobody opens a channel (a peer that does not speak it): dropped when the time is up.
    const [lonely, lonelySeen] = make({ openWaitMs: 50 });
    out.expired = await lonely.send('too late');
    out.expiredDrops = lonelySeen.dropped;

    // The page refuses what is not text or bytes, and what no receiver would join.
    const refused = (data) => meshpeer.send(data).then(() => 'sent', (e) => e.name);
    out.refused = [await refused(42), await refused(new Uint8Array(chunks.MAX_MESSAGE + 1))];
    return out;
}""".replace("MEGABYTE", str(MEGABYTE))


async def test_framing_and_flow_control(open_page: OpenPage) -> None:
    page = (await open_page("unit")).page
    out = await page.evaluate(MODULES)
    assert out["kinds"] == {
        "short": ["text:2"],
        "empty": ["text:0"],
        "fullText": ["text:16384"],
        "longText": ["3:16384", "4:3"],
        "wide": ["text:16384"],
        "wider": ["3:16384", "4:4"],
        "bytes": ["0:16384"],
        "over": ["1:16384", "2:2"],
        "none": ["0:1"],
    }
    assert out["binaryRoundTrip"] and out["textRoundTrip"]
    assert out["overLimit"] == [None, "dropped", None]  # said once, then skipped
    assert out["afterLimit"] == 3  # the next message is whole again
    assert out["unknown"] == "a frame of unknown kind 9"
    assert out["pieceStarted"] is None
    assert out["mixed"] == "a text piece inside a binary message"
    assert (out["held"], out["finished"]) == (2, [10, 11, 12])
    assert out["discarded"] == 1
    assert out["empty"] == "an empty binary frame"

    assert out["queueFull"] == [{"count": 1, "reason": "64 messages were already waiting"}]
    assert out["early"] == {"sent": 64, "count": 64, "first": "m0", "last": "m63"}
    assert 1024 * 1024 - 2 * 16384 < out["stalledAt"] <= 1024 * 1024
    assert out["flow"] == {"drains": 3, "big": True, "after": True, "last": "after"}
    assert out["received"] == [40000, "hello"]
    assert out["joiningBeforeClose"] == 1
    assert out["cut"] == [False, False, 0]
    assert out["closeDrops"] == [
        {"count": 2, "reason": "the connection closed"},
        {"count": 1, "reason": "the connection closed"},
    ]
    assert out["afterClose"] is False
    assert out["expired"] is False
    assert out["expiredDrops"] == [{"count": 1, "reason": "no data channel within 0.05 s"}]
    assert out["refused"] == ["TypeError", "RangeError"]


# -- helpers --------------------------------------------------------------------------
async def channel_open(me: RoomPage, peer: str) -> None:
    async def is_open() -> bool:
        snap = await me.snapshot()
        return bool(snap["data"]["channels"].get(peer) == "open")

    await eventually(is_open, seconds(20), f"{me.peer_id}: the data channel to {peer} open")


async def messages(me: RoomPage) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await me.page.evaluate("meshpeer.messages()")
    return found


async def wait_message(
    me: RoomPage, match: Callable[[dict[str, Any]], bool], what: str, within: float = 20
) -> dict[str, Any]:
    async def arrived() -> dict[str, Any] | None:
        return next((m for m in await messages(me) if match(m)), None)

    return await eventually(arrived, seconds(within), f"{me.peer_id}: {what}")


async def chat_lines(me: RoomPage) -> list[str]:
    lines: list[str] = await me.page.eval_on_selector_all(
        "#chat-log li", "items => items.map((li) => li.textContent)"
    )
    return lines


def errors(me: RoomPage) -> list[str]:
    return [line for line in me.console if line.startswith(("error", "pageerror"))]


async def pair(open_page: OpenPage, room: str, **second: Any) -> tuple[RoomPage, RoomPage]:
    """Two pages in ``room``, their data channel open both ways (the second one offers)."""
    alice = await open_page("alice", room=room)
    await alice.wait_joined()
    bob = await open_page("bob", room=room, **second)
    await channel_open(alice, "bob")
    await channel_open(bob, "alice")
    return alice, bob


# -- page <-> page ----------------------------------------------------------------------
async def test_pages_chat_both_ways_in_the_panel(open_page: OpenPage) -> None:
    transcript = Transcript()

    async def relay(page: Page) -> None:
        await page.route_web_socket(SIGNALING_SOCKET, transcript.relay)

    alice, bob = await pair(open_page, "chat", setup=relay)
    # The newcomer's one and only offer carried the channel: no second round trip for it.
    offers = transcript.of_type("offer", transcript.sent)
    assert len(offers) == 1 and "m=application" in offers[0]["sdp"]

    await alice.page.fill("#chat-input", "hello bob")
    await alice.page.press("#chat-input", "Enter")
    got = await wait_message(bob, lambda m: m["text"] == "hello bob", "alice's message")
    assert got["from"] == "alice" and got["channel"] == "meshpeer" and not got["binary"]
    assert await alice.page.input_value("#chat-input") == ""

    await bob.page.fill("#chat-input", "hi <b>alice</b>")
    await bob.page.get_by_role("button", name="Send").click()
    await wait_message(alice, lambda m: m["text"] == "hi <b>alice</b>", "bob's answer")

    # A channel of another label that the other side opens is shown as it is.
    await alice.page.evaluate(
        """() => {
            const dc = meshpeer.page.links.get('bob').pc.createDataChannel(
                'notes', { ordered: false, maxRetransmits: 0 });
            dc.onopen = () => dc.send('side note');
        }"""
    )
    await wait_message(bob, lambda m: m["channel"] == "notes", "the message on 'notes'")
    assert await chat_lines(alice) == ["you: hello bob", "bob: hi <b>alice</b>"]
    assert await chat_lines(bob) == [
        "alice: hello bob",
        "you: hi <b>alice</b>",
        "alice [notes]: side note",
    ]
    for me in (alice, bob):
        assert errors(me) == []

    # The panel on a desktop and on a phone: in view, labelled, nothing wider than the screen.
    for name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        await bob.page.set_viewport_size(size)
        field = bob.page.get_by_label("Message to everyone in the room")
        await field.scroll_into_view_if_needed()
        assert await field.is_visible() and await field.is_enabled()
        assert await bob.page.get_by_role("log", name="Messages").is_visible()
        for selector in ("#chat-log", "#chat-input", "#chat-form button"):
            box = await bob.page.locator(selector).bounding_box()
            assert box is not None and box["x"] >= 0, (name, selector)
            assert box["x"] + box["width"] <= size["width"], (name, selector)
        wide = await bob.page.evaluate("document.documentElement.scrollWidth > innerWidth")
        assert not wide, name
        await bob.page.screenshot(path=artifacts_dir() / f"chat-{name}.png", full_page=True)


async def test_megabyte_between_pages_both_ways(open_page: OpenPage) -> None:
    alice, bob = await pair(open_page, "bytes")
    for sender, receiver in ((alice, bob), (bob, alice)):
        sent = await sender.page.evaluate(
            "(to) => meshpeer.sendBytes(MEGABYTE, to)".replace("MEGABYTE", str(MEGABYTE)),
            receiver.peer_id,
        )
        assert sent["sent"] == {receiver.peer_id: True}
        got = await wait_message(receiver, lambda m: bool(m["sha256"]), "a megabyte")
        assert (got["binary"], got["bytes"], got["sha256"]) == (True, MEGABYTE, sent["sha256"])
        assert f"{sender.peer_id}: <{MEGABYTE} bytes>" in await chat_lines(receiver)
    for me in (alice, bob):
        assert (await me.snapshot())["data"]["dropped"] == 0
        assert errors(me) == []


@pytest.mark.parametrize("leaver", ["sender", "receiver"])
async def test_a_peer_leaving_half_way_through_a_message(leaver: str, open_page: OpenPage) -> None:
    """The page that stays goes on: a half-joined message is dropped without a word, a half
    sent one is reported as not delivered, and nothing lands in the console as an error."""

    async def stall(page: Page) -> None:
        await page.add_init_script(STALL)

    room = f"cut-{leaver}"
    receiver, sender = await pair(open_page, room, setup=stall)  # bob sends, alice receives
    await sender.page.evaluate(
        "() => { stallAfter(8); window.pending = meshpeer.sendBytes(MEGABYTE, 'alice'); }".replace(
            "MEGABYTE", str(MEGABYTE)
        )
    )

    async def half_joined() -> bool:
        joining = (await receiver.snapshot())["data"]["joining"]
        return bool(joining.get("bob") == 8 * PIECE)

    await eventually(half_joined, seconds(10), "alice holding 8 pieces of bob's message")

    if leaver == "sender":
        await sender.leave()

        async def gone() -> bool:
            return not (await receiver.snapshot())["peers"]

        await eventually(gone, seconds(10), "alice closing her link to bob")
        assert await messages(receiver) == []  # the part that came was not delivered
        # Alice still talks to whoever comes next.
        carol = await open_page("carol", room=room)
        await channel_open(carol, "alice")
        await carol.page.evaluate("meshpeer.send('after bob')")
        await wait_message(receiver, lambda m: m["text"] == "after bob", "carol's message")
        survivor = receiver
    else:
        await receiver.leave()
        result = await sender.page.evaluate("window.pending")
        assert result["sent"] == {"alice": False}
        assert "Not delivered to alice: 1 message (the connection closed)." in await chat_lines(
            sender
        )
        assert (await sender.snapshot())["data"]["dropped"] == 1
        survivor = sender
    assert (await survivor.snapshot())["joined"]
    assert errors(survivor) == []


# -- page <-> agent ---------------------------------------------------------------------
def stall_agent(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """STALL for aiortc in this process (the agent's side): ``stall(n)`` lets ``n`` more
    frames out, then ``bufferedAmount`` reads 1 GiB and the agent waits to send more."""
    budget = [float("inf")]
    send = RTCDataChannel.send
    real: property = vars(RTCDataChannel)["bufferedAmount"]

    def counted(self: RTCDataChannel, data: str | bytes) -> None:
        budget[0] -= 1
        send(self, data)

    def amount(self: RTCDataChannel) -> int:
        return 2**30 if budget[0] <= 0 else int(real.__get__(self))

    monkeypatch.setattr(RTCDataChannel, "send", counted)
    monkeypatch.setattr(RTCDataChannel, "bufferedAmount", property(amount))

    def stall(frames: int) -> None:
        budget[0] = frames

    return stall


def received(bot: Bot, peer: str) -> list[ev.DataReceived]:
    return [e for _, e in bot.events if isinstance(e, ev.DataReceived) and e.peer == peer]


def dropped(bot: Bot) -> list[ev.DataDropped]:
    return [e for _, e in bot.events if isinstance(e, ev.DataDropped)]


@asynccontextmanager
async def bot_and_page(
    signaling: RunningServer,
    open_page: OpenPage,
    room: str,
    first: str = "browser",
    setup: Callable[[Page], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[RoomPage, Bot]]:
    """The page and a bot in ``room`` (whoever comes second offers), the channel open."""
    web = None
    if first == "browser":
        web = await open_page("web", room=room, setup=setup)
        await web.wait_joined()
    async with running_bot(signaling.ws_url, "bot", room=room) as bot:
        if web is None:
            web = await open_page("web", room=room, setup=setup)
        await channel_open(web, "bot")

        async def opened() -> bool:
            return any(
                isinstance(e, ev.ChannelOpened) and e.peer == "web" and e.label == "meshpeer"
                for _, e in bot.events
            )

        await eventually(opened, seconds(20), "the bot's data channel to web open")
        yield web, bot


@pytest.mark.parametrize("first", ["bot", "browser"])
async def test_page_and_agent_text_and_a_megabyte_both_ways(
    first: str, signaling: RunningServer, open_page: OpenPage
) -> None:
    """Both offer directions: the page makes the channel (it joins second) or takes the
    agent's."""
    async with bot_and_page(signaling, open_page, f"data-{first}", first) as (web, bot):
        assert bot.agent.send_data("hello web", to="web") == 1
        await wait_message(web, lambda m: m["text"] == "hello web", "the bot's text")
        await web.page.fill("#chat-input", "hello bot")
        await web.page.press("#chat-input", "Enter")

        async def text_in() -> bool:
            return [e.data for e in received(bot, "web")] == ["hello bot"]

        await eventually(text_in, seconds(10), "the bot getting web's text")

        blob = os.urandom(MEGABYTE)
        assert bot.agent.send_data(blob, to="web") == 1
        got = await wait_message(web, lambda m: bool(m["binary"] and m["sha256"]), "bytes")
        assert (got["bytes"], got["sha256"]) == (MEGABYTE, hashlib.sha256(blob).hexdigest())

        sent = await web.page.evaluate("(n) => meshpeer.sendBytes(n, 'bot')", MEGABYTE)
        assert sent["sent"] == {"bot": True}

        async def bytes_in() -> bytes | None:
            return next((e.data for e in received(bot, "web") if isinstance(e.data, bytes)), None)

        data = await eventually(bytes_in, seconds(20), "the bot getting web's megabyte")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (MEGABYTE, sent["sha256"])
        assert await chat_lines(web) == [
            "bot: hello web",
            "you: hello bot",
            f"bot: <{MEGABYTE} bytes>",
            f"you → bot: <{MEGABYTE} bytes>",
        ]
        assert dropped(bot) == []
        assert (await web.snapshot())["data"]["dropped"] == 0
        assert errors(web) == []


async def test_extra_meshpeer_channels_from_the_remote_are_closed(
    signaling: RunningServer, open_page: OpenPage
) -> None:
    """Glare makes at most two `meshpeer` channels per link (each side's offer carries
    one): the page closes any further one the remote opens, warns once, and talks on."""
    async with bot_and_page(signaling, open_page, "data-extra") as (web, bot):
        link = bot.agent.links[PeerId("web")]
        extra = [link.pc.createDataChannel(MESHPEER) for _ in range(5)]  # the bot offered one

        async def refused() -> bool:
            return sum(dc.readyState == "closed" for dc in extra) == 4

        await eventually(refused, seconds(10), "web closing 4 of the 5 extra channels")
        held = await web.page.evaluate("meshpeer.page.links.get('bot').data.receiving.size")
        assert held == 2
        assert [dc.readyState for dc in extra].count("open") == 1
        warned = [line for line in web.console if "more `meshpeer` channels" in line]
        assert len(warned) == 1, warned

        assert bot.agent.send_data("still here", to="web") == 1
        await wait_message(web, lambda m: m["text"] == "still here", "the bot's text")
        sent = await web.page.evaluate("meshpeer.send('and me', 'bot')")
        assert sent == {"bot": True}

        async def text_in() -> bool:
            return [e.data for e in received(bot, "web")] == ["and me"]

        await eventually(text_in, seconds(10), "the bot getting web's text")
        assert errors(web) == []


@pytest.mark.parametrize("sender", ["agent", "page"])
async def test_the_agent_leaving_half_way_through_a_message(
    sender: str, signaling: RunningServer, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent leaves with a message half sent (``sender`` "agent": the page drops the
    part it joined) or half received (``sender`` "page": the page reports it undelivered)."""
    stall = stall_agent(monkeypatch)

    async def stall_page(page: Page) -> None:
        await page.add_init_script(STALL)

    room = f"data-cut-{sender}"
    async with bot_and_page(signaling, open_page, room, setup=stall_page) as (web, bot):
        if sender == "agent":
            stall(8)
            assert bot.agent.send_data(os.urandom(MEGABYTE), to="web") == 1

            async def half_joined() -> bool:
                joining = (await web.snapshot())["data"]["joining"]
                return bool(joining.get("bot") == 8 * PIECE)

            await eventually(half_joined, seconds(10), "web holding 8 pieces of the bot's")
        else:
            await web.page.evaluate(
                "(n) => { stallAfter(8); window.pending = meshpeer.sendBytes(n, 'bot'); }",
                MEGABYTE,
            )
        await bot.agent.leave()

    if sender == "agent":
        assert [(e.peer, e.size, e.incoming) for e in dropped(bot)] == [("web", MEGABYTE, False)]

        async def gone() -> bool:
            return not (await web.snapshot())["peers"]

        await eventually(gone, seconds(10), "web closing its link to the bot")
        assert await messages(web) == []
    else:
        result = await web.page.evaluate("window.pending")
        assert result["sent"] == {"bot": False}
        assert "Not delivered to bot: 1 message (the connection closed)." in await chat_lines(web)
        assert received(bot, "web") == []
    assert (await web.snapshot())["joined"]
    assert errors(web) == []
