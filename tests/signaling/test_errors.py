"""Bad input over real WebSockets: an error frame with a stable code, then either the
connection keeps working (per-message errors) or it closes with the documented code."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.signaling.clients import Clients, RawClient, clients
from tests.signaling.conftest import FAST_LIMITS, NodesFactory, ws_urls
from tests.support import RunningServer, running_server, seconds

#: This test reads one server's own counters or log: it runs on one node.
ONE_NODE = pytest.mark.parametrize("nodes", ["1-node"], indirect=True)


async def test_per_message_errors_keep_the_connection_usable(peers: Clients) -> None:
    early = await peers.connect("early")
    # Before join: garbage and routed messages are refused, the join still works after.
    for text, code in [
        ("not json", "invalid-json"),
        ('{"type":"chat"}', "not-joined"),
        ('{"type":"offer","to":"x","sdp":"y"}', "not-joined"),
        ("[]", "bad-message"),
    ]:
        await early.send_raw(text)
        await early.recv_error(code)
    await early.ws.send_bytes(b"\x00\x01")
    await early.recv_error("binary-frame")
    await early.send(type="join", peerId="early")
    assert (await early.recv_type("peer-list"))["peers"] == []

    alice = await peers.join("alice")
    assert await early.recv() == {"type": "peer-joined", "peerId": "alice"}
    too_big = json.dumps({"type": "chat", "to": "early", "pad": "x" * FAST_LIMITS.max_frame_bytes})
    cases: list[tuple[str | bytes, str]] = [
        ("{oops", "invalid-json"),
        (b"binary", "binary-frame"),
        ('{"type":"offer","to":"early"}', "bad-message"),  # no sdp
        ('{"type":"answer","to":"early","sdp":5}', "bad-message"),
        ('{"type":"chat","to":17}', "bad-message"),
        ('{"no":"type"}', "bad-message"),
        ('{"type":"peer-left","peerId":"early"}', "reserved-type"),
        ('{"type":"peer-joined","peerId":"ghost"}', "reserved-type"),
        ('{"type":"peer-list","peers":[]}', "reserved-type"),
        ('{"type":"error","code":"x","message":"y"}', "reserved-type"),
        ('{"type":"join","peerId":"again"}', "already-joined"),
        ('{"type":"chat","to":"nobody"}', "unknown-peer"),
        ('{"type":"chat","from":"early","to":"early"}', "forged-from"),
        (too_big, "frame-too-large"),
    ]
    for i, (data, code) in enumerate(cases):
        if isinstance(data, bytes):
            await alice.ws.send_bytes(data)
        else:
            await alice.send_raw(data)
        await alice.recv_error(code)
        # The connection is still usable: the next message routes.
        assert (await alice.roundtrip(early, n=i))["n"] == i
    # Nothing of the refused messages reached anyone: early's next frame is a fresh one.
    await alice.send(type="after", to="early")
    assert await early.recv() == {"type": "after", "to": "early", "from": "alice"}


async def test_error_frame_shape(peers: Clients) -> None:
    peer = await peers.connect()
    await peer.send_raw("{")
    frame = await peer.recv()
    assert set(frame) == {"type", "code", "message"}
    assert frame["type"] == "error"
    assert frame["code"] == "invalid-json"


@pytest.mark.parametrize(
    "join",
    [
        {"type": "join"},
        {"type": "join", "peerId": ""},
        {"type": "join", "peerId": 42},
        {"type": "join", "peerId": "a", "room": ["x"]},
        {"type": "join", "peerId": "a" * 129},
        {"type": "join", "peerId": "x\nFAKE LOG LINE joined"},  # forged log lines
        {"type": "join", "peerId": "tab\there"},
        {"type": "join", "peerId": "bell\u0007"},
        {"type": "join", "peerId": "c1\u0085"},
        {"type": "join", "peerId": "sep\u2028"},
        {"type": "join", "peerId": "a", "room": "lobby\r\nX"},
        {"type": "join", "peerId": "\u202emallory"},  # look-alikes: a bidi override,
        {"type": "join", "peerId": "a", "room": "lob\u200bby"},  # a zero-width space,
        {"type": "join", "peerId": "Jose\u0301"},  # a name not in NFC,
        {"type": "join", "peerId": "x\ud800"},  # a lone surrogate (others saw "x?")
    ],
)
async def test_bad_join_gets_bad_message_then_close_4400(peers: Clients, join: object) -> None:
    peer = await peers.connect()
    await peer.send_raw(json.dumps(join))
    await peer.recv_error("bad-message")
    assert await peer.expect_close() == 4400


async def test_taken_id_gets_id_taken_then_close_4409_and_owner_is_untouched(
    peers: Clients,
) -> None:
    owner = await peers.join("alice")
    other = await peers.join("bob")
    await owner.recv_type("peer-joined")
    thief = await peers.connect("thief")
    await thief.send(type="join", peerId="alice")
    # A join sent right behind the refused one is not acted on either.
    await thief.send(type="join", peerId="carol")
    error = await thief.recv_error("id-taken")
    assert "alice" in error["message"]
    assert await thief.expect_close() == 4409
    # No peer-joined/peer-left reached the room, and alice still owns her ID.
    assert (await other.roundtrip(owner, text="you there?"))["text"] == "you there?"
    assert (await owner.roundtrip(other, text="yes"))["text"] == "yes"


@pytest.mark.parametrize("guess", ["guess", "cl\u00e9", "\U0001f600" * 24])
async def test_wrong_resume_token_gets_bad_resume_token_then_close_4401(
    peers: Clients, guess: str
) -> None:
    owner = await peers.join("alice")
    thief = await peers.connect("thief")
    await thief.send(type="join", peerId="alice", resumeToken=guess)
    await thief.recv_error("bad-resume-token")
    assert await thief.expect_close() == 4401
    bob = await peers.join("bob")
    assert bob.peers == ["alice"]
    assert await owner.recv() == {"type": "peer-joined", "peerId": "bob"}
    assert (await bob.roundtrip(owner))["from"] == "bob"


async def test_full_room_gets_room_full_then_close_4403(make_nodes: NodesFactory) -> None:
    """Two seats, counted across nodes: a and b on different nodes fill the room."""
    async with make_nodes(max_peers=2) as nodes, clients(ws_urls(nodes)) as peers:
        a = await peers.join("a")
        b = await peers.join("b")
        await a.recv_type("peer-joined")
        c = await peers.connect("c")
        await c.send(type="join", peerId="c")
        await c.recv_error("room-full")
        assert await c.expect_close() == 4403
        elsewhere = await peers.join("c", room="other")  # only that room is full
        assert elsewhere.peers == []
        # The refused join left no trace in the full room.
        assert (await b.roundtrip(a))["from"] == "b"
        await b.ws.close()
        assert await a.recv() == {"type": "peer-left", "peerId": "b"}
        assert (await peers.join("c")).peers == ["a"]  # a seat is free again


async def test_join_timeout_gets_join_timeout_then_close_4408(make_nodes: NodesFactory) -> None:
    async with make_nodes(join_timeout=seconds(0.3)) as nodes, clients(ws_urls(nodes)) as peers:
        idle = await peers.connect("idle")
        await idle.recv_error("join-timeout")
        assert await idle.expect_close() == 4408
        # Garbage does not extend the deadline.
        chatty = await peers.connect("chatty")
        await chatty.send_raw("x")
        await chatty.recv_error("invalid-json")
        await chatty.recv_error("join-timeout")
        assert await chatty.expect_close() == 4408
        # A join in time is not affected by the timer later on.
        ok = await peers.join("ok")
        await asyncio.sleep(seconds(0.4))
        late = await peers.join("late")
        assert late.peers == ["ok"]
        assert await ok.recv() == {"type": "peer-joined", "peerId": "late"}


@ONE_NODE
async def test_frame_over_four_times_the_limit_is_refused_by_the_transport(
    peers: Clients, fast_server: RunningServer
) -> None:
    alice = await peers.join("alice")
    bob = await peers.join("bob")
    await alice.recv_type("peer-joined")
    huge = json.dumps({"type": "chat", "pad": "x" * (4 * FAST_LIMITS.max_frame_bytes)})
    await bob.send_raw(huge)
    assert await bob.expect_close() == 1009
    assert await alice.recv() == {"type": "peer-left", "peerId": "bob"}
    assert fast_server.server.metrics.leaves["too-big"] == 1


async def test_just_under_four_times_the_limit_is_an_error_not_a_close(peers: Clients) -> None:
    alice = await peers.join("alice")
    big = '{"type":"chat","p":"' + "x" * (4 * FAST_LIMITS.max_frame_bytes - 30) + '"}'
    assert len(big) < 4 * FAST_LIMITS.max_frame_bytes
    await alice.send_raw(big)
    await alice.recv_error("frame-too-large")
    bob = await peers.join("bob")
    assert (await alice.roundtrip(bob))["from"] == "alice"


async def test_flooding_is_rate_limited_with_one_error_and_recovers(
    make_nodes: NodesFactory,
) -> None:
    async with make_nodes(rate=2.0, burst=10) as nodes, clients(ws_urls(nodes)) as peers:
        flooder = await peers.join("flooder")  # the join used one token
        bob = await peers.join("bob")
        await flooder.recv_type("peer-joined")
        for i in range(40):
            await flooder.send(type="chat", n=i)
        await flooder.recv_error("rate-limited")
        await asyncio.sleep(seconds(0.6))  # at 2/s at least one token is back
        await flooder.send(type="after-flood")
        received = []
        while (frame := await bob.recv())["type"] == "chat":
            received.append(frame["n"])
        assert frame["type"] == "after-flood"  # the connection recovered
        # The burst went through in order, the rest of the flood was dropped.
        assert received == list(range(len(received)))
        assert 9 <= len(received) < 40
        # One error for the episode, not one per dropped message.
        with pytest.raises(TimeoutError):
            await flooder.ws.receive(timeout=0.1)
        assert sum(node.server.metrics.errors["rate-limited"] for node in nodes) == 1


async def test_oversized_frames_count_against_the_rate_like_any_other(
    make_nodes: NodesFactory,
) -> None:
    """A flood of oversized frames used to get one error each, around the rate limit."""
    async with make_nodes(rate=2.0, burst=10) as nodes, clients(ws_urls(nodes)) as peers:
        flooder = await peers.join("flooder")
        too_big = json.dumps({"type": "chat", "pad": "x" * FAST_LIMITS.max_frame_bytes})
        for _ in range(40):
            await flooder.send_raw(too_big)
        codes = []
        while True:
            try:
                msg = await flooder.ws.receive(timeout=seconds(0.3))
            except TimeoutError:
                break
            codes.append(json.loads(msg.data)["code"])
        assert codes.count("frame-too-large") <= 10  # the burst's worth, not 40
        assert codes.count("rate-limited") == 1


async def test_a_broadcaster_of_large_frames_is_limited_by_bytes_a_router_is_not(
    make_nodes: NodesFactory,
) -> None:
    """Alice broadcasts 12 frames of ~3 KB to the 3 others of a room, Bob sends 12 alike to
    Carol alone. The byte budget pays for 4.5 of Alice's (each costs 3 x its size), all
    of Bob's (each costs its size): Alice gets one ``rate-limited``, the rest of her flood
    is dropped, her connection lives on; Bob is not limited. The budget refills too
    slowly (1 byte/s) to change that, however slow the machine."""
    frame = json.dumps({"type": "chat", "n": 0, "pad": "x" * 3000})
    cost = 3 * len(frame)
    async with (
        make_nodes(byte_rate=1.0, byte_burst=4 * cost + cost // 2) as nodes,
        clients(ws_urls(nodes)) as peers,
    ):
        alice, bob, carol, dave = [await peers.join(name) for name in ("a", "b", "c", "d")]
        for peer, joined_after in ((alice, 3), (bob, 2), (carol, 1)):
            for _ in range(joined_after):
                await peer.recv_type("peer-joined")
        for n in range(12):
            await alice.send(type="chat", n=n, pad="x" * 3000)
            await bob.send(type="chat", to="c", n=n, pad="x" * 3000)
        await alice.send(type="fence", to="c")  # small: the budget's remainder pays for it
        await bob.send(type="fence", to="c")
        got: dict[str, list[int]] = {"a": [], "b": []}
        fences = 0
        while fences < 2:
            frame_in = await carol.recv()
            if frame_in["type"] == "fence":
                fences += 1
            else:
                got[frame_in["from"]].append(frame_in["n"])
        assert got == {"a": [0, 1, 2, 3], "b": list(range(12))}
        assert [(await dave.recv())["n"] for _ in range(4)] == [0, 1, 2, 3]
        assert [(await bob.recv())["n"] for _ in range(4)] == [0, 1, 2, 3]
        error = await alice.recv_error("rate-limited")
        assert "bytes/s" in error["message"]
        for peer in (alice, bob, dave):
            await peer.expect_silence(0.2)
        assert nodes[0].server.metrics.errors["rate-limited"] == 1


async def test_a_bad_room_in_the_url_is_refused_like_one_in_the_join(peers: Clients) -> None:
    for room in ("x" * 129, "two\nlines"):
        peer = await peers.connect(params={"room": room})
        await peer.send(type="join", peerId="a")
        error = await peer.recv_error("bad-message")
        assert "?room=" in error["message"]
        assert await peer.expect_close() == 4400
    good = await peers.join("a", url_room="fine")
    assert good.peer_list["room"] == "fine"


async def test_client_chosen_names_cannot_forge_log_lines(
    peers: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="signaling.server")
    forger = await peers.connect()
    await forger.send(type="join", peerId="x\nFAKE LOG LINE joined", room="r")
    await forger.recv_error("bad-message")
    await peers.join("it's fine", room="r")
    for record in caplog.records:
        assert "\n" not in record.getMessage(), record.getMessage()
    assert any("\"it's fine\" joined room 'r'" in r.getMessage() for r in caplog.records)


async def test_raw_client_binary_and_text_fragments(fast_server: RunningServer) -> None:
    raw = await RawClient.connect(fast_server.port)
    try:
        assert (await raw.join("raw"))["peers"] == []
        raw.send_frame(0x2, b"\x00")
        assert (await raw.recv_json())["code"] == "binary-frame"
        raw.send_frame(0x1, b"\xff\xfe")  # not UTF-8: a protocol violation, close 1007
        opcode, payload = await raw.read_frame()
        assert opcode == 0x8
        assert int.from_bytes(payload[:2], "big") == 1007
    finally:
        await raw.close()


async def test_a_default_room_seats_a_full_mesh_and_then_says_it_is_full() -> None:
    """Default limits: 8 seats, what a full mesh of browsers carries (``--max-peers``'s
    help says why); the ninth hears ``room-full`` naming the limit, the words the page and
    the agent show, then 4403."""
    async with running_server() as server, clients(server.ws_url) as peers:
        seated = [await peers.join(f"p{i}") for i in range(8)]
        assert seated[-1].peers == [f"p{i}" for i in range(7)]
        ninth = await peers.connect("p8")
        await ninth.send(type="join", peerId="p8")
        error = await ninth.recv_error("room-full")
        assert error["message"] == "room 'default' is full (8 peers)"
        assert await ninth.expect_close() == 4403
