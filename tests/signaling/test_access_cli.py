"""The access flags of ``meshpeer serve`` and ``meshpeer token``, and a real server process
with tokens on, joined by a real ``meshpeer join`` agent."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import pytest

import peer.cli
import signaling.cli
from peer.agent import Agent
from peer.signaling_client import JoinRefused
from signaling.auth import TokenVerifier
from signaling.protocol import PeerId, RoomId
from tests.signaling.test_cli import REPO, server_process
from tests.support import seconds

SECRET = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "auth.secret"
    path.write_text(SECRET + "\n")  # as `openssl rand -hex 16 > file` writes it
    return path


def config(*argv: str) -> signaling.cli.ServerConfig:
    args = peer.cli.build_parser().parse_args(["serve", *argv])
    return signaling.cli.config_from_args(args)


def test_access_flags_build_the_config(secret_file: Path, tmp_path: Path) -> None:
    turn_secret = tmp_path / "turn.secret"
    turn_secret.write_text("coturn-static-auth-secret\n")
    built = config(
        f"--auth-secret-file={secret_file}",
        "--allow-origin=https://App.example.com/",
        "--allow-origin=http://localhost:3000",
        "--trust-proxy",
        "--turn-url=turn:turn.example.com:3478?transport=udp",
        "--turn-url=turns:turn.example.com:5349?transport=tcp",
        f"--turn-secret-file={turn_secret}",
        "--turn-ttl=30m",
        "--ip-connections=0",
        "--ip-connects-per-minute=10",
    )
    assert built.auth_secret == SECRET.encode()  # the trailing newline is not part of it
    assert built.allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert built.trust_proxy
    assert built.turn is not None and built.turn.secret == b"coturn-static-auth-secret"
    assert built.turn.ttl == 1800
    assert [u.url for u in built.turn.urls][1] == "turns:turn.example.com:5349?transport=tcp"
    assert (built.limits.ip_connections, built.limits.ip_connects_per_minute) == (0, 10)
    plain = config()
    assert (plain.auth_secret, plain.turn, plain.allowed_origins) == (None, None, ())


def test_the_secret_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPEER_AUTH_SECRET", SECRET)
    assert config().auth_secret == SECRET.encode()


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--allow-origin", "example.com"], "not an origin"),
        (["--turn-url", "turn:user:pass@t:3478"], "without credentials"),
        (["--turn-url", "stun:t:3478"], "turn: or turns:"),
        (["--turn-ttl", "soon"], "not a number"),
        (["--ip-connections", "-1"], "must be at least 0"),
    ],
)
def test_bad_access_flags_are_usage_errors(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        peer.cli.main(["serve", *argv])
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize(
    ("contents", "extra", "complaint"),
    [
        ("short", [], "at least 32"),
        ("", [], "is empty"),
        (SECRET, ["--turn-url=turn:t:3478"], "--turn-url needs --turn-secret-file"),
    ],
)
def test_unusable_secrets_stop_the_server_with_a_reason(
    tmp_path: Path,
    contents: str,
    extra: list[str],
    complaint: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "secret"
    path.write_text(contents)
    assert peer.cli.main(["serve", f"--auth-secret-file={path}", *extra]) == 2
    assert complaint in caplog.text
    assert contents not in caplog.text or not contents


def test_token_prints_a_token_the_server_accepts(
    secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["token", "--secret-file", str(secret_file), "--room", "lobby", "--id", "alice"]
    assert peer.cli.main([*argv, "--ttl", "2h"]) == 0
    token = capsys.readouterr().out.strip()
    grant = TokenVerifier(SECRET.encode()).admit(
        token, RoomId("lobby"), PeerId("alice"), time.time()
    )
    assert 7190 < grant.expires - time.time() <= 7200


def test_token_without_a_secret_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHPEER_AUTH_SECRET", raising=False)
    assert peer.cli.main(["token", "--room", "r", "--id", "a"]) == 2
    assert "--secret-file" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# A real server process with tokens on


@pytest.mark.slow
async def test_agents_join_with_tokens_and_are_refused_without(
    secret_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    command = [sys.executable, "-m", "signaling", "--host", "0.0.0.0", "--heartbeat", "30"]
    command += ["--auth-secret-file", str(secret_file), "--log-level", "INFO"]
    async with server_process(command) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"

        async def mint(room: str, peer_id: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "peer", "token", "--secret-file", str(secret_file),
                "--room", room, "--id", peer_id, cwd=REPO, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            return out.decode().strip()

        token = await mint("lobby", "bot")
        # No --id, no --room: both come from the token.
        async with Agent(url, token=token, stats_interval=None) as agent:
            assert (agent.peer_id, agent.room) == ("bot", "lobby")
            await agent.drop_signaling()  # the rejoin sends the token again
            deadline = time.monotonic() + seconds(10)
            while agent.reconnects < 1 or not agent.signaling_connected:
                assert time.monotonic() < deadline, "the agent did not rejoin"
                await asyncio.sleep(0.05)
        with pytest.raises(JoinRefused, match="invalid-token"):
            await Agent(url, room="other", token=token, stats_interval=None).join()
        with pytest.raises(JoinRefused, match="auth-required"):
            await Agent(url, room="lobby", peer_id="x", stats_interval=None).join()
        await server.stop(signal.SIGTERM)
    log = server.stderr
    assert "anyone who can reach" not in log  # auth is on: no warning
    assert log.count("refused a join") == 2 and token not in log
    assert "token for another room" in log


@pytest.mark.slow
async def test_serving_beyond_loopback_without_auth_warns_once() -> None:
    command = [sys.executable, "-m", "signaling", "--host", "0.0.0.0"]
    async with server_process(command) as server:
        await server.stop(signal.SIGTERM)
    assert server.stderr.count("anyone who can reach 0.0.0.0") == 1
    assert "WARNING" in server.stderr


def test_join_takes_its_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPEER_TOKEN", "from-env")
    args = peer.cli.build_parser().parse_args(["join"])
    assert args.token == "from-env"


def test_a_bad_ice_server_url_is_reported_without_its_password(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "turn:alice:s3cret-pw@bad host:3478"
    assert peer.cli.main(["serve", "--ice-server", bad]) == 2
    assert "bad ICE server" in caplog.text and "s3cret-pw" not in caplog.text
    assert peer.cli.main(["join", "--ice-server", bad, "--duration", "1"]) == 1
    err = capsys.readouterr().err
    assert "bad ICE server" in err and "s3cret-pw" not in err
