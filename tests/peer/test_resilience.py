"""Crashes, lost signaling and the reference server: the mesh survives what it should."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from peer import events as ev
from peer.agent import Agent
from peer.mesh import LinkState
from signaling.protocol import PeerId
from tests.peer.helpers import (
    agents,
    connectable,
    frames_from,
    full_mesh_flowing,
    join_command,
    serve,
    small_media,
)
from tests.support import (
    REPO,
    RunningServer,
    eventually,
    free_port,
    reference_server_binary,
    running_server,
    seconds,
)

pytestmark = pytest.mark.slow


async def test_crashed_peer_is_cleaned_up(server: RunningServer) -> None:
    """A killed `meshpeer join` process: the server sees the drop, peer-left closes it here."""
    async with agents(server.ws_url, ["alice"]) as (alice,):
        left: list[ev.Event] = []
        alice.add_listener(lambda e: left.append(e) if isinstance(e, ev.PeerLeft) else None)
        proc = await asyncio.create_subprocess_exec(
            *join_command(server.ws_url, "crasher"),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await eventually(
                lambda: frames_from(alice, "crasher") >= 5,
                seconds(30),
                "frames from the subprocess",
            )
            link = alice.links[PeerId("crasher")]
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), seconds(5))
            await eventually(
                lambda: "crasher" not in alice.links, seconds(10), "the crashed peer's cleanup"
            )
            assert link.state is LinkState.CLOSED
            assert all(tap.ended for tap in link.taps)
            assert ev.PeerLeft(PeerId("crasher")) in left
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_signaling_drop_keeps_media_and_rejoins(server: RunningServer) -> None:
    async with agents(server.ws_url, ["alice", "bob", "carol"]) as trio:
        alice, bob, _carol = trio
        await eventually(lambda: full_mesh_flowing(trio), seconds(15), "the mesh")
        links = {a.peer_id: dict(a.links) for a in trio}
        await bob.drop_signaling()
        await eventually(
            lambda: bob.reconnects == 1 and bob.signaling_connected, seconds(10), "bob's rejoin"
        )
        # the server took bob's ID back with the resume token: the same connections carry on
        before = frames_from(alice, "bob")
        await eventually(
            lambda: frames_from(alice, "bob") > before + 10, seconds(5), "media from bob"
        )
        await asyncio.sleep(seconds(1))  # anything wrongly scheduled would have happened by now
        assert {a.peer_id: dict(a.links) for a in trio} == links
        assert set(alice.members) == {"bob", "carol"}
        # and signaling works again: a newcomer meets bob through the server
        async with agents(server.ws_url, ["dave"]) as (dave,):
            await eventually(lambda: full_mesh_flowing([bob, dave]), seconds(15), "bob <-> dave")


async def test_server_restart_keeps_media_and_everyone_rejoins() -> None:
    """The server goes away (1001 after peer-left for everyone) and comes back on the same port."""
    port = free_port()
    from aiohttp import web

    from signaling.server import SignalingServer

    async def start() -> web.AppRunner:
        runner = web.AppRunner(SignalingServer().app(), access_log=None, shutdown_timeout=2)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = await start()
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        async with agents(url, ["alice", "bob", "carol"]) as trio:
            await eventually(lambda: full_mesh_flowing(trio), seconds(15), "the mesh")
            links = {a.peer_id: dict(a.links) for a in trio}
            await runner.cleanup()
            await eventually(
                lambda: not any(a.signaling_connected for a in trio), seconds(5), "the drop"
            )
            # stay down past the peer-left grace: only the 1001 close keeps the connections
            await asyncio.sleep(trio[0].peer_left_grace * 3)
            runner = await start()
            await eventually(
                lambda: (
                    all(a.signaling_connected for a in trio)
                    and all(len(a.members) == 2 for a in trio)
                ),
                seconds(15),
                "everyone back in the room",
            )
            await asyncio.sleep(seconds(1))
            assert {a.peer_id: dict(a.links) for a in trio} == links, "connections were replaced"
            counts = {
                (a.peer_id, b.peer_id): frames_from(a, b.peer_id)
                for a in trio
                for b in trio
                if a is not b
            }
            await eventually(
                lambda: all(
                    frames_from(a, b) > n + 5
                    for (a_id, b), n in counts.items()
                    for a in trio
                    if a.peer_id == a_id
                ),
                seconds(5),
                "media still flowing everywhere",
            )
    finally:
        await runner.cleanup()


@pytest.fixture
def reference_url() -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, BIND_HOST="127.0.0.1", PORT=str(port))
    proc = subprocess.Popen(
        [str(reference_server_binary())],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        proc.kill()
        proc.wait()


async def test_against_reference_go_server(reference_url: str) -> None:
    """No rooms, `peers` omitted when empty, no error/resumeToken: the mesh still forms."""
    await connectable(reference_url)
    medias = [small_media(n) for n in ("alice", "bob", "carol")]
    trio = [
        Agent(reference_url, peer_id=n, media=m)
        for n, m in zip(("alice", "bob", "carol"), medias, strict=True)
    ]
    try:
        for agent in trio:
            await agent.join()
        await eventually(
            lambda: full_mesh_flowing(trio), seconds(15), "the mesh on the reference server"
        )
        await trio[2].leave()
        await eventually(
            lambda: all("carol" not in a.links for a in trio[:2]), seconds(10), "peer-left"
        )
    finally:
        await asyncio.gather(*(a.leave() for a in trio))
        for media in medias:
            media.stop()


async def test_join_errors_are_clear(tmp_path: Path) -> None:
    from peer.signaling_client import JoinRefused, SignalingError
    from signaling.server import ServerConfig
    from signaling.session import Limits

    with pytest.raises(SignalingError, match="cannot reach"):
        await Agent(f"ws://127.0.0.1:{free_port()}/ws", peer_id="x").join()
    config = ServerConfig(limits=Limits(max_peers=1))
    async with running_server(config) as small, agents(small.ws_url, ["alice"]):
        with pytest.raises(JoinRefused, match="room-full"):
            await Agent(small.ws_url, room="test", peer_id="bob").join()
    async with running_server() as srv, agents(srv.ws_url, ["alice"]):
        with pytest.raises(JoinRefused, match="id-taken"):
            await Agent(srv.ws_url, room="test", peer_id="alice").join()


async def test_killed_server_keeps_media_and_everyone_rejoins() -> None:
    """kill -9 on the server: no peer-left at all, sockets just drop; media is untouched."""
    port = free_port()
    server = await serve(port)
    try:
        async with agents(f"ws://127.0.0.1:{port}/ws", ["alice", "bob"]) as pair:
            await eventually(lambda: full_mesh_flowing(pair), seconds(15), "the pair")
            links = {a.peer_id: dict(a.links) for a in pair}
            server.kill()
            await server.wait()
            await eventually(
                lambda: not any(a.signaling_connected for a in pair), seconds(5), "the drop"
            )
            server = await serve(port)
            await eventually(
                lambda: all(a.signaling_connected and len(a.members) == 1 for a in pair),
                seconds(15),
                "both back in the room",
            )
            assert {a.peer_id: dict(a.links) for a in pair} == links
            before = frames_from(pair[0], "bob")
            await eventually(lambda: frames_from(pair[0], "bob") > before + 5, seconds(5), "media")
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
