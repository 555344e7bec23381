"""The room page between browsers: media both ways, errors in plain words, leaving, layout."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Browser

from signaling.ice import parse_ice_server
from signaling.server import ServerConfig
from signaling.session import Limits
from tests.browser.conftest import OpenPage
from tests.browser.pages import DESKTOP, PHONE, RoomPage, artifacts_dir, open_room_page
from tests.support import RunningServer, eventually, running_server, seconds

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


async def test_index_serves_page_and_modules(signaling: RunningServer, open_page: OpenPage) -> None:
    alice = await open_page("alice")
    response = await alice.page.request.get(f"{signaling.http_url}/static/app.js")
    assert response.ok
    assert "javascript" in response.headers["content-type"]
    assert response.headers["cache-control"] == "no-cache"  # never a mix of two versions
    config = await alice.page.request.get(f"{signaling.http_url}/config.json")
    assert await config.json() == {"iceServers": []}  # never a public STUN server by default
    snap = await alice.wait_joined()
    assert snap["room"] == "default"
    assert snap["sending"] == {"audio": True, "video": True}
    assert await alice.page.text_content("#self-name") == "alice"


async def test_two_browsers_exchange_audio_and_video(open_page: OpenPage) -> None:
    alice = await open_page("alice", room="pair")
    await alice.wait_joined()
    bob = await open_page("bob", room="pair")
    for me, other in ((alice, bob), (bob, alice)):
        await me.wait_state(other.peer_id, "connected")
        await me.wait_receiving(other.peer_id, "video")
        await me.wait_receiving(other.peer_id, "audio")
    assert await alice.tile_names() == ["bob"]
    assert await alice.page.text_content(".peer-list li[data-peer='bob'] .state") == "connected"
    for me in (alice, bob):
        assert not [line for line in me.console if line.startswith(("error", "pageerror"))]

    shots = artifacts_dir()
    await alice.page.screenshot(path=shots / "page-desktop-two-browsers.png")
    await bob.page.set_viewport_size(PHONE)
    await bob.page.screenshot(path=shots / "page-phone-two-browsers.png", full_page=True)
    await bob.page.set_viewport_size(DESKTOP)

    await bob.leave()
    await alice.page.wait_for_selector(".tile[data-peer='bob']", state="detached")
    assert await alice.tile_names() == []
    assert (await bob.snapshot())["peers"] == {}
    assert await bob.page.text_content("#status") == "You left the room"
    assert await bob.page.is_visible("#join-dialog")


async def test_taken_id_is_explained_in_plain_words(open_page: OpenPage) -> None:
    first = await open_page("sam", room="names")
    await first.wait_joined()
    second = await open_page("sam", room="names")
    dialog = await second.page.wait_for_selector("#join-dialog[open]", timeout=seconds(10) * 1000)
    assert dialog is not None
    reason = await second.page.text_content("#join-reason")
    assert reason == "Someone in room “names” already uses the name “sam”. Pick another name."
    assert reason in await second.notices()
    assert await second.page.text_content("#status") == "Not in the room"
    assert (await first.snapshot())["joined"]  # the holder is not disturbed

    # The dialog's form joins again under another name.
    await second.page.fill("#join-id", "sam2")
    await second.page.click("#join-form button[type=submit]")
    await second.page.wait_for_url("**id=sam2**")
    await second.wait_state("sam", "connected")


async def test_full_room_is_explained(browser: Browser) -> None:
    config = ServerConfig(limits=Limits(max_peers=1))
    async with running_server(config) as server:
        context = await browser.new_context(viewport=DESKTOP)
        try:
            first = await open_room_page(context, server.http_url, peer_id="a", room="tiny")
            await first.wait_joined()
            second = await open_room_page(context, server.http_url, peer_id="b", room="tiny")
            await second.page.wait_for_selector("#join-dialog[open]", timeout=seconds(10) * 1000)
            assert await second.page.text_content("#join-reason") == (
                "Room “tiny” is full. Try again later or pick another room."
            )
        finally:
            await context.close()


async def test_ice_servers_come_from_the_server(browser: Browser) -> None:
    turn = parse_ice_server("turn:user:secret@127.0.0.1:3478")
    async with running_server(ServerConfig(ice_servers=(turn,))) as server:
        context = await browser.new_context(viewport=DESKTOP)
        try:
            one = await open_room_page(context, server.http_url, peer_id="one", room="ice")
            await one.wait_joined()
            two = await open_room_page(context, server.http_url, peer_id="two", room="ice")
            await two.wait_state("one", "connected")
            expected = [{"urls": "turn:127.0.0.1:3478", "username": "user", "credential": "secret"}]
            assert (await two.snapshot())["iceServers"] == expected
            used = await two.page.evaluate(
                """meshpeer.page.links.get('one').pc.getConfiguration().iceServers
                    .map((s) => [[].concat(s.urls), s.username])"""
            )
            assert used == [[["turn:127.0.0.1:3478"], "user"]]  # the connection really has it
            assert await one.page.evaluate("meshpeer.snapshot().iceServers") == expected
        finally:
            await context.close()


async def test_glare_settles_with_the_lower_id_polite(open_page: OpenPage) -> None:
    """Both sides renegotiate at the same instant: the offers cross, the impolite side (ben)
    ignores ann's, the polite one rolls its own back; exactly one offer wins, on the same
    connection, and media keeps flowing."""
    ann = await open_page("ann", room="glare")
    await ann.wait_joined()
    ben = await open_page("ben", room="glare")
    await ann.wait_state("ben", "connected")
    await ben.wait_state("ann", "connected")
    for me, peer in ((ann, "ben"), (ben, "ann")):
        await me.page.evaluate("(peer) => { meshpeer.page.links.get(peer).pc.__glare = 1; }", peer)
    # Both add a transceiver at the same wall-clock instant: both offers cross on the wire.
    start_at = await ann.page.evaluate("Date.now() + 300")
    script = """([peer, at]) => new Promise((resolve) => setTimeout(() => {
        meshpeer.page.links.get(peer).pc.addTransceiver('video', {direction: 'recvonly'});
        resolve();
    }, at - Date.now()))"""
    await asyncio.gather(
        ann.page.evaluate(script, ["ben", start_at]), ben.page.evaluate(script, ["ann", start_at])
    )

    async def settled(me: RoomPage, peer: str) -> list[object]:
        state: list[object] = await me.page.evaluate(
            """(peer) => { const pc = meshpeer.page.links.get(peer).pc;
                return [pc.signalingState, pc.getTransceivers().filter(t => t.mid).length]; }""",
            peer,
        )
        return state

    for _ in range(int(seconds(100))):
        a, b = await settled(ann, "ben"), await settled(ben, "ann")
        if a == b == ["stable", 4]:
            break
        await asyncio.sleep(0.1)
    assert a == b == ["stable", 4]  # audio + video + both added transceivers, on both sides
    await ann.wait_receiving("ben")
    await ben.wait_receiving("ann")
    assert (await ann.snapshot())["peers"] == {"ben": "connected"}
    # The offers crossed: ben (higher ID, impolite) had its own out when ann's came and
    # ignored it; ann (polite) never ignores, she rolled hers back and answered ben's.
    assert [line for line in ben.console if "ignoring ann's offer (glare" in line], ben.console
    assert not [line for line in ann.console if "ignoring" in line], ann.console
    # One connection each side, the one they had: nothing was replaced.
    for me, peer in ((ann, "ben"), (ben, "ann")):
        same: bool = await me.page.evaluate(
            """(peer) => meshpeer.page.links.size === 1
                && meshpeer.page.links.get(peer).pc.__glare === 1""",
            peer,
        )
        assert same, me.peer_id


BRIGHTNESS = """(peer) => {
    const video = document.querySelector(`.tile[data-peer='${peer}'] video`);
    const canvas = Object.assign(document.createElement('canvas'), {width: 64, height: 48});
    const g = canvas.getContext('2d');
    g.drawImage(video, 0, 0, 64, 48);
    const d = g.getImageData(0, 0, 64, 48).data;
    let sum = 0;
    for (let i = 0; i < d.length; i += 4) sum += d[i] + d[i + 1] + d[i + 2];
    return sum / (d.length / 4) / 3;
}"""


async def test_camera_and_microphone_buttons_mute_what_the_others_get(
    open_page: OpenPage,
) -> None:
    cam = await open_page("cam", room="mute")
    await cam.wait_joined()
    eye = await open_page("eye", room="mute")
    await eye.wait_receiving("cam", "video")
    await eye.wait_receiving("cam", "audio")

    async def brightness() -> float:
        value: float = await eye.page.evaluate(BRIGHTNESS, "cam")
        return value

    async def energy() -> float:
        return float((await eye.inbound("cam", "audio")).get("totalAudioEnergy", 0))

    async def sound_flowing(expected: bool) -> bool:
        before = await energy()
        await asyncio.sleep(0.5)
        return ((await energy()) - before > 1e-3) is expected

    async def picture(lit: bool) -> bool:
        value = await brightness()
        return value > 20 if lit else value < 5

    # A control first: the fake camera is bright and the fake microphone beeps.
    await eventually(lambda: picture(True), seconds(10), "cam's picture at eye")
    await eventually(lambda: sound_flowing(True), seconds(10), "cam's sound at eye")

    await cam.page.click("#toggle-camera")
    await cam.page.click("#toggle-mic")
    assert await cam.page.get_attribute("#toggle-camera", "aria-pressed") == "true"
    assert await cam.page.text_content("#toggle-camera") == "Start camera"
    assert await cam.page.text_content("#toggle-mic") == "Unmute mic"
    await eventually(lambda: picture(False), seconds(10), "a black picture at eye")
    await eventually(lambda: sound_flowing(False), seconds(10), "silence at eye")
    assert await cam.page.is_visible("#local-tile .placeholder")  # "camera off" on the preview

    await cam.page.click("#toggle-camera")
    await cam.page.click("#toggle-mic")
    assert await cam.page.text_content("#toggle-camera") == "Stop camera"
    await eventually(lambda: picture(True), seconds(10), "cam's picture back at eye")
    await eventually(lambda: sound_flowing(True), seconds(10), "cam's sound back at eye")
    assert (await eye.snapshot())["peers"] == {"cam": "connected"}


async def test_page_modules_parse_addresses_and_descriptions(open_page: OpenPage) -> None:
    """The page's pure helpers, run in the browser that uses them."""
    page = (await open_page("unit")).page
    result = await page.evaluate(
        """async () => {
            const params = await import('/static/params.js');
            const peer = await import('/static/peer.js');
            const messages = await import('/static/messages.js');
            const sdp = (fp) => `v=0\\r\\na=fingerprint:sha-256 ${fp}\\r\\n`;
            return {
                full: params.readParams('?room=lobby&id=%20ann%20&watch=1'),
                bare: params.readParams(''),
                off: params.readParams('?watch=0&id=').watch,
                nfc: params.readParams('?id=Jose%CC%81&room=Cafe%CC%81'),
                ws: params.signalingUrl('https://example.org/?room=x#y'),
                wsPlain: params.signalingUrl('http://127.0.0.1:8080/'),
                wsRoom: params.signalingUrl('http://127.0.0.1:8080/?room=a', 'a b'),
                other: params.pageUrl('http://h/?room=a&id=b&watch=1', {room: 'c', peerId: 'd'}),
                same: peer.fingerprint(sdp('AB:CD')) === peer.fingerprint(sdp('ab:cd')),
                differ: peer.fingerprint(sdp('AB:CD')) === peer.fingerprint(sdp('AB:CE')),
                none: peer.fingerprint('v=0'),
                // aiortc lists 3 fingerprints, Chromium's remoteDescription keeps 1 of them
                sameCert: peer.sameCertificate(
                    sdp('AA') + 'a=fingerprint:sha-512 BB\\r\\n', 'a=fingerprint:sha-512 bb'),
                otherCert: peer.sameCertificate(sdp('AA'), sdp('AB')),
                unknown: messages.serverErrorText('new-code', 'it broke', {peerId: 'a'}),
                quiet: messages.serverErrorText('unknown-peer', 'gone', {peerId: 'a', room: 'r'}),
                busy: messages.serverErrorText('unavailable', 'later', {peerId: 'a'}),
                busyFinal: messages.FINAL_CLOSE_CODES.has(1013),
            };
        }"""
    )
    assert result["full"] == {
        "room": "lobby",
        "peerId": "ann",
        "chosenId": True,
        "watch": True,
        "token": None,
    }
    assert result["bare"]["room"] is None and not result["bare"]["chosenId"]
    assert result["bare"]["peerId"].startswith("guest-")
    assert result["off"] is False
    # The server refuses names not in NFC: the page sends its own ID and room in NFC.
    assert (result["nfc"]["peerId"], result["nfc"]["room"]) == ("Jos\u00e9", "Caf\u00e9")
    assert result["ws"] == "wss://example.org/ws"
    assert result["wsPlain"] == "ws://127.0.0.1:8080/ws"
    assert result["wsRoom"] == "ws://127.0.0.1:8080/ws?room=a+b"  # for room affinity
    assert result["other"] == "http://h/?watch=1&room=c&id=d"
    assert (result["same"], result["differ"], result["none"]) == (True, False, None)
    assert (result["sameCert"], result["otherCert"]) == (True, False)
    assert result["unknown"] == "The server reported a problem: it broke"
    assert result["quiet"] is None
    # Shared rooms unreachable (several nodes, Redis down): said plainly, and retried.
    assert "keeps trying" in result["busy"] and result["busyFinal"] is False


async def test_the_page_runs_under_its_content_security_policy(
    signaling: RunningServer, browser: Browser
) -> None:
    """The policy holds in the browser: the page joins without one refusal, while code slipped
    in inline does not run and a socket to another host is refused, each reported to the
    console where every page test looks (conftest.page_opener fails on it)."""
    context = await browser.new_context(viewport=DESKTOP)
    try:
        me = await open_room_page(context, signaling.http_url, peer_id="strict", room="csp")
        await me.wait_joined()
        assert me.csp_violations() == []
        ran = await me.page.evaluate(
            """() => new Promise((resolve) => {
                const script = document.createElement("script");
                script.textContent = "window.injected = true";
                document.head.append(script);
                try { new WebSocket("ws://127.0.0.2:9/ws"); } catch {}
                setTimeout(() => resolve(window.injected === true), 200);
            })"""
        )
        assert ran is False

        async def both_refused() -> list[str] | None:
            lines = me.csp_violations()
            joined = " ".join(lines)
            return lines if "script-src" in joined and "connect-src" in joined else None

        await eventually(both_refused, seconds(5), "both refusals in the console")
    finally:
        await context.close()
