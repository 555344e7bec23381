"""The agent's signaling client survives its owner's bugs, and never stops silently."""

from __future__ import annotations

import logging

import pytest

from peer.signaling_client import SignalingClient
from signaling.protocol import Message, PeerId, PeerList, RoomId
from tests.signaling.clients import clients
from tests.support import RunningServer, eventually, seconds


async def test_a_failing_message_handler_is_logged_and_signaling_goes_on(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[Message] = []

    def on_message(message: Message) -> None:
        got.append(message)
        if len(got) == 1:
            raise ValueError("a bug in the owner")

    client = SignalingClient(
        server.ws_url,
        PeerId("bot"),
        on_message=on_message,
        on_joined=lambda peer_list, rejoin: None,
        on_lost=lambda code: None,
    )
    await client.connect()
    try:
        async with clients(server.ws_url) as peers:
            alice = await peers.join("alice")
            await alice.send(type="chat", to="bot", text="one")
            await alice.send(type="chat", to="bot", text="two")
            await eventually(lambda: len(got) >= 3, seconds(5), "peer-joined and both chats")
        assert client.connected
        assert "a bug in the owner" in caplog.text and "failed" in caplog.text
    finally:
        await client.close()


async def test_if_reconnecting_dies_the_owner_is_told(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="peer.signaling_client")
    lost: list[int | None] = []

    def on_joined(peer_list: PeerList, rejoin: bool) -> None:
        if rejoin:
            raise RuntimeError("a bug on rejoin")

    client = SignalingClient(
        server.ws_url,
        PeerId("bot"),
        on_message=lambda message: None,
        on_joined=on_joined,
        on_lost=lost.append,
    )
    await client.connect()
    try:
        await client.drop_connection()
        await eventually(lambda: client.fatal is not None, seconds(10), "the client to give up")
        assert "a bug on rejoin" in str(client.fatal)
        assert lost[-1] is None  # the owner hears of it (the agent reports Failed)
        assert "signaling stopped" in caplog.text
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("url_query", "expected"), [("", "lobby"), ("?room=lobby", "lobby"), ("?room=other", "other")]
)
async def test_the_room_is_named_in_the_websocket_url_too(
    server: RunningServer, url_query: str, expected: str
) -> None:
    """A load balancer can then keep a room's members on one node; a room the user put in
    the URL is left alone (the join's room decides, as ever)."""
    client = SignalingClient(
        server.ws_url + url_query,
        PeerId("bot"),
        RoomId("lobby"),
        on_message=lambda message: None,
        on_joined=lambda peer_list, rejoin: None,
        on_lost=lambda code: None,
    )
    await client.connect()
    try:
        (conn,) = server.server.connections
        assert conn.request.query.getall("room") == [expected]
        assert conn.room == "lobby"
    finally:
        await client.close()
