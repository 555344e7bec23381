"""Reference-client compatibility over real WebSockets: join, peer lists, routing, rooms, from.

To prove that something did NOT arrive without sleeping, a test sends a "fence" message
along the same path afterwards: delivery is in order per sender, so if the next frame is the
fence, nothing else came before it.
"""

from __future__ import annotations

import json

import aiohttp

from tests.signaling.clients import Clients, Peer
from tests.support import RunningServer


async def fence(sender: Peer, *receivers: Peer) -> None:
    """Broadcast a marker from ``sender``; each receiver's next frame must be it."""
    await sender.send(type="fence", n=id(receivers))
    for receiver in receivers:
        frame = await receiver.recv()
        assert frame == {"type": "fence", "n": id(receivers), "from": sender.name}, (
            f"{receiver.name} got {frame} before the fence"
        )


async def test_first_joiner_gets_an_empty_peer_list(peers: Clients) -> None:
    alice = await peers.join("alice")
    assert alice.peer_list["type"] == "peer-list"
    assert alice.peer_list["peers"] == []  # present and empty, never omitted
    assert alice.peer_list["room"] == "default"
    assert isinstance(alice.token, str) and len(alice.token) >= 16


async def test_peer_list_in_join_order_and_peer_joined_to_the_others(peers: Clients) -> None:
    names = ["zoe", "adam", "mia", "bo"]
    joined: list[Peer] = []
    for i, name in enumerate(names):
        peer = await peers.join(name)
        assert peer.peers == names[:i]
        for earlier in joined:
            assert await earlier.recv() == {"type": "peer-joined", "peerId": name}
        joined.append(peer)
    await fence(joined[0], *joined[1:])
    tokens = {p.token for p in joined}
    assert len(tokens) == len(names)


async def test_targeted_message_reaches_only_its_addressee(peers: Clients) -> None:
    alice, bob = await peers.join("alice"), await peers.join("bob")
    carol = await peers.join("carol")
    await alice.recv_type("peer-joined")
    await alice.recv_type("peer-joined")
    await bob.recv_type("peer-joined")
    offer = '{"type":"offer","to":"bob","sdp":"v=0\\r\\no=- 4611 2 IN IP4 127.0.0.1\\r\\n"}'
    await alice.send_raw(offer)
    received = await bob.recv_text()
    assert json.loads(received) == {**json.loads(offer), "from": "alice"}
    await fence(alice, bob, carol)  # carol's next frame is the fence: she got no offer


async def test_broadcast_without_to_reaches_everyone_else(peers: Clients) -> None:
    alice, bob = await peers.join("alice"), await peers.join("bob")
    carol = await peers.join("carol")
    await alice.recv_type("peer-joined")
    await alice.recv_type("peer-joined")
    await bob.recv_type("peer-joined")
    await bob.send(type="chat", text="hi all")
    for receiver in (alice, carol):
        assert await receiver.recv() == {"type": "chat", "text": "hi all", "from": "bob"}
    await fence(carol, alice, bob)  # bob did not get his own broadcast back


async def test_payloads_are_forwarded_byte_for_byte_except_the_stamped_from(
    peers: Clients,
) -> None:
    alice, bob = await peers.join("alice"), await peers.join("bob")
    await alice.recv_type("peer-joined")
    texts = [
        # Unknown type, odd spacing, unicode, numbers that JSON round trips would change.
        '{ "type" : "my-app-thing", "to":"bob", "n": 1.50, "big": 12345678901234567890,'
        ' "s": "\\u00e9\u00e9 \\ud83d\\ude00", "nested": {"a": [true, null]} }',
        '{"type":"candidate","to":"bob","candidate":{"candidate":"candidate:1 1 udp 2122260223'
        ' 6a1c.local 51234 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"Zf"}}',
        '{"type":"candidate","to":"bob","candidate":null}',
        '{"type":"answer","to":"bob","sdp":"v=0\\r\\n","extra":"kept"}',
    ]
    for text in texts:
        await alice.send_raw(text)
        received = await bob.recv_text()
        assert received.replace('"from":"alice",', "", 1) == text
        assert json.loads(received)["from"] == "alice"
    # A message that already carries the right from is not touched at all.
    own = '{"from":"alice","type":"chat","to":"bob","x":  1}'
    await alice.send_raw(own)
    assert await bob.recv_text() == own


async def test_forged_from_is_refused_and_the_connection_keeps_working(peers: Clients) -> None:
    alice, bob = await peers.join("alice"), await peers.join("bob")
    mallory = await peers.join("mallory")
    await alice.recv_type("peer-joined")
    await alice.recv_type("peer-joined")
    await bob.recv_type("peer-joined")
    await mallory.send(type="offer", **{"from": "alice"}, to="bob", sdp="evil")
    error = await mallory.recv_error("forged-from")
    assert "alice" in error["message"]
    await fence(mallory, alice, bob)  # bob never saw the forged offer


async def test_rooms_are_isolated(peers: Clients) -> None:
    a1 = await peers.join("a1", room="one")
    b1 = await peers.join("b1", url_room="two")  # room from the URL
    assert a1.peer_list["room"] == "one"
    assert b1.peers == []
    assert b1.peer_list["room"] == "two"
    a2 = await peers.join("a2", room="one", url_room="two")  # the join field wins
    assert a2.peers == ["a1"]
    assert await a1.recv() == {"type": "peer-joined", "peerId": "a2"}
    twin = await peers.join("a1", room="two")  # the same ID in another room is fine
    assert twin.peers == ["b1"]
    assert await b1.recv() == {"type": "peer-joined", "peerId": "a1"}
    lonely = await peers.join("d")
    assert lonely.peers == []  # the default room is a room of its own

    await a1.send(type="chat", text="one only")
    assert (await a2.recv())["text"] == "one only"
    # Targeting an ID that exists only in another room is unknown-peer.
    await a1.send(type="offer", to="b1", sdp="x")
    await a1.recv_error("unknown-peer")
    await twin.ws.close()
    assert await b1.recv() == {"type": "peer-left", "peerId": "a1"}
    await lonely.send(type="chat", text="default only")
    # Neither the broadcast, nor the offer, nor the peer-left crossed a room: the next
    # frame each one sees is from its own room.
    await fence(a1, a2)
    await fence(a2, a1)
    assert (await peers.join("b2", room="two")).peers == ["b1"]
    assert await b1.recv() == {"type": "peer-joined", "peerId": "b2"}
    assert (await peers.join("d2")).peers == ["d"]
    assert await lonely.recv() == {"type": "peer-joined", "peerId": "d2"}


async def test_unknown_to_is_an_error_and_the_connection_keeps_routing(peers: Clients) -> None:
    alice, bob = await peers.join("alice"), await peers.join("bob")
    await alice.recv_type("peer-joined")
    await alice.send(type="offer", to="nobody", sdp="x")
    error = await alice.recv_error("unknown-peer")
    assert "nobody" in error["message"]
    assert (await alice.roundtrip(bob, text="still here"))["text"] == "still here"


async def test_every_join_gets_exactly_one_peer_left_on_close_and_on_drop(
    peers: Clients,
) -> None:
    alice = await peers.join("alice")
    bob, carol = await peers.join("bob"), await peers.join("carol")
    for _ in range(2):
        await alice.recv_type("peer-joined")
    await bob.recv_type("peer-joined")

    await bob.ws.close()  # clean close
    assert await alice.recv() == {"type": "peer-left", "peerId": "bob"}
    assert await carol.recv() == {"type": "peer-left", "peerId": "bob"}

    transport = carol.ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.abort()  # TCP gone, no close frame
    assert await alice.recv() == {"type": "peer-left", "peerId": "carol"}

    # Exactly once: the next thing alice sees is a newcomer, not a second peer-left.
    dave = await peers.join("dave")
    assert dave.peers == ["alice"]
    assert await alice.recv() == {"type": "peer-joined", "peerId": "dave"}


async def test_peer_that_never_joined_leaves_no_trace(peers: Clients) -> None:
    alice = await peers.join("alice")
    lurker = await peers.connect("lurker")
    await lurker.ws.close()
    bob = await peers.join("bob")
    assert bob.peers == ["alice"]
    assert await alice.recv() == {"type": "peer-joined", "peerId": "bob"}


async def test_reference_server_style_client_interoperates(fast_server: RunningServer) -> None:
    """What the reference React client does: join, offer each listed peer, answer, trickle."""
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(fast_server.ws_url)
        await first.send_json({"type": "join", "peerId": "p1"})
        assert (await first.receive_json())["peers"] == []
        second = await http.ws_connect(fast_server.ws_url)
        await second.send_json({"type": "join", "peerId": "p2"})
        listing = await second.receive_json()
        assert listing["peers"] == ["p1"]  # extra fields (room, resumeToken) are ignorable
        assert await first.receive_json() == {"type": "peer-joined", "peerId": "p2"}
        for peer in listing["peers"]:
            await second.send_json({"type": "offer", "from": "p2", "to": peer, "sdp": "o"})
        offer = await first.receive_json()
        assert offer == {"type": "offer", "from": "p2", "to": "p1", "sdp": "o"}
        await first.send_json({"type": "answer", "from": "p1", "to": "p2", "sdp": "a"})
        assert await second.receive_json() == {
            "type": "answer",
            "from": "p1",
            "to": "p2",
            "sdp": "a",
        }
        cand = {
            "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": "u",
        }
        await first.send_json({"type": "candidate", "from": "p1", "to": "p2", "candidate": cand})
        assert (await second.receive_json())["candidate"] == cand
        await second.close()
        assert await first.receive_json() == {"type": "peer-left", "peerId": "p2"}
        await first.close()
