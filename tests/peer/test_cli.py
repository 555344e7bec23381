"""The `meshpeer join` and `meshpeer demo` commands, and recordings that decode."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import av
import pytest

from peer.agent import Agent
from peer.cli import build_parser, main
from peer.media.recorder import Recorder
from signaling.protocol import PeerId, RoomId
from tests.peer.helpers import agents, frames_from, join_command, small_media
from tests.support import REPO, RunningServer, eventually, free_port, seconds

pytestmark = pytest.mark.slow


def decoded_frames(path: Path) -> dict[str, int]:
    counts = {"video": 0, "audio": 0}
    with av.open(str(path)) as container:
        for frame in container.decode(*container.streams):
            counts["video" if isinstance(frame, av.VideoFrame) else "audio"] += 1
    return counts


async def test_recording_holds_what_was_received(server: RunningServer, tmp_path: Path) -> None:
    recorder = Recorder(tmp_path)
    async with agents(server.ws_url, ["sender"]) as (_sender,):
        media = small_media("listener", audio="none")
        listener = Agent(
            server.ws_url, room="test", peer_id="listener", media=media, recorder=recorder
        )
        await listener.join()
        try:
            await eventually(
                lambda: frames_from(listener, "sender") >= 45, seconds(15), "three seconds of video"
            )
        finally:
            received = frames_from(listener, "sender")
            audio = frames_from(listener, "sender", "audio")
            await listener.leave()  # closes the connection: the recorder finalises the file
            media.stop()
    files = await recorder.close()
    assert len(files) == 1 and "sender" in files[0].name
    counts = decoded_frames(files[0])
    assert received * 0.8 <= counts["video"] <= received + 1, (counts, received)
    assert counts["audio"] > 0 and audio > 0


def test_join_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["join", f"ws://127.0.0.1:{free_port()}/ws", "--duration", "1", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot reach signaling server" in err


def test_join_rejects_bad_ice_server(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["join", "--ice-server", "turn:nocredentials.example:3478", "--duration", "1"])
    assert code == 1
    assert "needs user:pass@" in capsys.readouterr().err


def test_join_send_only_refuses_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["join", "--send-only", "--record", "out", "--snapshot", "s.png"]) == 2
    assert "--send-only receives nothing to output: drop --record or --snapshot" in (
        capsys.readouterr().err
    )


async def test_join_ctrl_c_leaves_cleanly(server: RunningServer, tmp_path: Path) -> None:
    """SIGINT: the process leaves the room, finalises its recording and its stats file."""
    stats = tmp_path / "stats.jsonl"
    stderr = tmp_path / "stderr.txt"
    command = join_command(
        server.ws_url, "cli", "--record", str(tmp_path / "rec"), "--video", "synthetic",
        "--audio", "tone", "--stats-json", str(stats),
        "--stats-interval", "0.5", "--snapshot", str(tmp_path / "snap.png"),
        "--log-level", "INFO",
    )  # fmt: skip
    with stderr.open("w") as err:
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err
        )
    try:
        async with agents(server.ws_url, ["alice"]) as (alice,):
            await eventually(
                lambda: frames_from(alice, "cli") >= 10, seconds(30), "frames from the CLI peer"
            )
            await eventually(
                lambda: (
                    stats.exists() and '"frames_in": 0' not in stats.read_text().splitlines()[-1]
                ),
                seconds(10),
                "the CLI peer to receive",
            )
            proc.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(proc.wait(), seconds(20))
            assert code == 0, stderr.read_text()
            await eventually(
                lambda: PeerId("cli") not in alice.members, seconds(5), "peer-left for the CLI peer"
            )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    (recording,) = (tmp_path / "rec").iterdir()
    counts = decoded_frames(recording)
    assert counts["video"] > 0 and counts["audio"] > 0
    assert (tmp_path / "snap.png").stat().st_size > 1000
    last = json.loads(stats.read_text().splitlines()[-1])
    assert last["peer"] == "cli" and last["peers"][0]["peer"] == "alice"
    assert last["loop"] == "uvloop"  # the command's default (cheaper per RTP datagram)
    assert last["memory"]["rss_kib"] > 0 and last["memory"]["malloc_used_kib"] > 0
    assert last["memory"]["malloc_mmapped_kib"] >= 0


def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--bots", "2", "--duration", "2", "--out", str(out), "--width", "160",
                 "--height", "120"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    assert "bot1       bot2       yes" in text
    assert "bot2       bot1       yes" in text
    assert (out / "mosaic.png").stat().st_size > 1000
    (recording,) = (out / "recordings").iterdir()
    assert decoded_frames(recording)["video"] > 0


async def test_a_failure_while_leaving_still_leaves_and_finalises(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last snapshot failing must not skip leaving the room or closing the recordings."""
    from peer.media.mosaic import SnapshotWriter
    from peer.runner import join_room

    async def broken_stop(self: SnapshotWriter) -> None:
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(SnapshotWriter, "stop", broken_stop)
    args = build_parser().parse_args(
        ["join", server.ws_url, "--room", "test", "--id", "cli", "--quiet", "--duration", "3",
         "--record", str(tmp_path / "rec"), "--snapshot", str(tmp_path / "snap.png"),
         "--width", "160", "--height", "120", "--fps", "15"]
    )  # fmt: skip
    async with agents(server.ws_url, ["alice"]):  # someone to record
        with pytest.raises(RuntimeError, match="caught fire"):
            await join_room(args)
        assert PeerId("cli") not in server.server.registry.table.room_members(RoomId("test"))
    (recording,) = (tmp_path / "rec").iterdir()
    assert decoded_frames(recording)["video"] > 0  # finalised: it decodes


async def test_join_chat_with_piped_stdin(server: RunningServer) -> None:
    """Two `meshpeer join --chat`, one on each event loop: lines piped into one print at the
    other as `peer: text`, bytes from an agent as `peer: <N bytes>`; the end of stdin does
    not end the process."""
    chat = ("--video", "none", "--audio", "none", "--chat")
    procs: list[asyncio.subprocess.Process] = []

    async def start(name: str, *extra: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *join_command(server.ws_url, name, *chat, *extra), cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proc)
        await eventually(
            lambda: PeerId(name) in server.server.registry.table.room_members(RoomId("test")),
            seconds(30),
            f"{name}'s join",
        )
        return proc

    async def lines(proc: asyncio.subprocess.Process, count: int) -> list[str]:
        assert proc.stdout is not None
        read = [await asyncio.wait_for(proc.stdout.readline(), seconds(15)) for _ in range(count)]
        return [line.decode().rstrip("\n") for line in read]

    try:
        first = await start("a", "--no-uvloop")  # asyncio's loop; b on uvloop (the default)
        second = await start("b")
        assert first.stdin is not None and second.stdin is not None
        second.stdin.write(b"hello from b\nsecond line\n")
        second.stdin.close()  # end of input: b stays in the room
        assert await lines(first, 2) == ["b: hello from b", "b: second line"]
        bot = Agent(server.ws_url, room="test", peer_id="bot", stats_interval=None)
        await bot.join()
        try:
            assert bot.send_data(bytes(100_000), to="b") == 1
            first.stdin.write("hi b, ça va?\n".encode())
            assert sorted(await lines(second, 2)) == ["a: hi b, ça va?", "bot: <100000 bytes>"]
        finally:
            await bot.leave()
        assert second.returncode is None
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(proc.wait(), seconds(20)) == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_join_with_a_token_file(tmp_path: Path) -> None:
    """`--token-file`: the token stays out of the command line (and so out of `ps`), and
    names the peer and the room as `--token` does."""
    from signaling.auth import mint_token
    from signaling.server import ServerConfig
    from tests.support import running_server

    secret = b"meshpeer cli tests: 32+ bytes of secret"
    token_file = tmp_path / "bot.token"
    token_file.write_text(mint_token(secret, "lobby", "filebot") + "\n")
    async with running_server(ServerConfig(auth_secret=secret)) as auth_server:
        command = [
            "-m", "peer", "join", auth_server.ws_url, "--token-file", str(token_file),
            "--video", "none", "--audio", "none", "--duration", "0.5", "--quiet",
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *command, cwd=REPO, stderr=subprocess.PIPE
        )
        _, err = await asyncio.wait_for(proc.communicate(), seconds(30))
        assert proc.returncode == 0, err.decode()
        assert auth_server.server.metrics.joins_total == 1
