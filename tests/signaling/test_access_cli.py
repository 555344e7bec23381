"""The access flags of ``meshpeer serve`` and ``meshpeer token``, and a real server process
with tokens on, joined by a real ``meshpeer join`` agent."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import pytest

import peer.cli
import signaling.cli
from peer.agent import Agent
from peer.signaling_client import JoinRefused
from signaling.auth import SecretError, TokenRefused, TokenVerifier
from signaling.protocol import PeerId, RoomId
from tests.signaling.processes import make_certificate, server_process
from tests.support import REPO, seconds

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
    turn_secret.write_text("coturn-static-auth-secret, 32+ bytes\n")
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
        "--public-url=https://rooms.example.com/",
    )
    assert built.auth_secret == SECRET.encode()  # the trailing newline is not part of it
    assert built.allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert built.trust_proxy
    assert built.turn is not None and built.turn.secret == b"coturn-static-auth-secret, 32+ bytes"
    assert built.turn.ttl == 1800
    assert [u.url for u in built.turn.urls][1] == "turns:turn.example.com:5349?transport=tcp"
    assert (built.limits.ip_connections, built.limits.ip_connects_per_minute) == (0, 10)
    assert built.public_url == "https://rooms.example.com/"
    assert config("--allow-origin", "*").allowed_origins == ("*",)
    plain = config()
    assert (plain.auth_secret, plain.turn, plain.allowed_origins) == (None, None, ())
    assert plain.public_url is None


def test_the_secret_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPEER_AUTH_SECRET", SECRET)
    assert config().auth_secret == SECRET.encode()


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--allow-origin", "example.com"], "not an origin"),
        (["--allow-origin", "https://*.example.com"], "not an origin"),
        (["--public-url", "rooms.example.com"], "not an http(s) URL"),
        (["--public-url", "wss://rooms.example.com/ws"], "not an http(s) URL"),
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


def test_a_short_turn_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The TURN secret guards every relay allocation: as long as the auth secret, from the
    file or the environment (the server then exits with status 2, as for the auth secret)."""
    path = tmp_path / "turn.secret"
    path.write_text("coturn-secret\n")
    with pytest.raises(SecretError, match="the TURN secret is 13 bytes; use at least 32"):
        config("--turn-url=turn:t:3478", f"--turn-secret-file={path}")
    monkeypatch.setenv("MESHPEER_TURN_SECRET", "coturn-secret")
    with pytest.raises(SecretError, match="at least 32") as refused:
        config("--turn-url=turn:t:3478")
    assert "coturn-secret" not in str(refused.value)


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


def test_an_audience_is_required_with_auth_audience_and_minted_with_audience(
    secret_file: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    built = config(f"--auth-secret-file={secret_file}", "--auth-audience=rooms.example.com")
    assert built.auth_audience == "rooms.example.com"
    assert config().auth_audience is None
    argv = ["token", "--secret-file", str(secret_file), "--room", "lobby", "--id", "alice"]
    assert peer.cli.main([*argv, "--audience", "rooms.example.com"]) == 0
    token = capsys.readouterr().out.strip()
    ours = TokenVerifier(SECRET.encode(), audience="rooms.example.com")
    assert ours.verify(token, time.time()).peer_id == "alice"
    with pytest.raises(TokenRefused):  # a server without --auth-audience takes none
        TokenVerifier(SECRET.encode()).verify(token, time.time())
    # An audience means nothing without tokens.
    assert peer.cli.main(["serve", "--auth-audience=rooms.example.com"]) == 2
    assert "--auth-audience needs --auth-secret-file" in caplog.text


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


@pytest.mark.slow
async def test_a_tls_server_behind_a_public_url_admits_its_own_origins_only(
    tmp_path: Path,
) -> None:
    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    command = [sys.executable, "-m", "signaling", "--certfile", str(cert), "--keyfile", str(key)]
    command += ["--public-url", "https://rooms.example.com/"]
    async with server_process(command, context) as server, aiohttp.ClientSession() as http:

        async def status(origin: str) -> int:
            try:
                ws = await http.ws_connect(server.ws_url, ssl=context, origin=origin)
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status
            await ws.close()
            return 101

        assert await status(f"https://127.0.0.1:{server.port}") == 101  # the page served here
        assert await status(f"http://127.0.0.1:{server.port}") == 403  # not over TLS
        assert await status("https://rooms.example.com") == 101
        assert await status("https://evil.example") == 403
        await server.stop(signal.SIGTERM)


@pytest.mark.slow
async def test_turn_without_auth_warns_that_the_relay_is_open(tmp_path: Path) -> None:
    """Without tokens, anyone who reaches the server gets TURN credentials: on loopback
    too (a reverse proxy may publish it)."""
    turn_secret = tmp_path / "turn.secret"
    turn_secret.write_text(SECRET)
    command = [sys.executable, "-m", "signaling", "--turn-url", "turn:127.0.0.1:9"]
    async with server_process([*command, "--turn-secret-file", str(turn_secret)]) as server:
        await server.stop(signal.SIGTERM)
    assert server.stderr.count("--turn-url without --auth-secret-file") == 1, server.stderr
    assert "WARNING" in server.stderr


@pytest.mark.slow
async def test_requests_aiohttp_cannot_parse_get_no_library_version_either() -> None:
    """Answered by aiohttp before any route, so not by the server's response hook."""
    async with server_process([sys.executable, "-m", "signaling"]) as server:
        for request in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request)
            head = (await asyncio.wait_for(reader.read(4096), seconds(5))).split(b"\r\n\r\n")[0]
            writer.close()
            lines = head.split(b"\r\n")
            assert lines[0].startswith(b"HTTP/1.0 400") and b"Server: meshpeer" in lines, head
        await server.stop(signal.SIGTERM)


def test_join_takes_its_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHPEER_TOKEN", "from-env")
    args = peer.cli.build_parser().parse_args(["join"])
    assert args.token == "from-env"


def test_join_takes_its_token_from_a_file_kept_out_of_ps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHPEER_TOKEN", "from-env")
    path = tmp_path / "alice.token"
    path.write_text("from-file\n")
    parse = peer.cli.build_parser().parse_args
    assert parse(["join", "--token-file", str(path)]).token == "from-file"  # over the env
    for argv, complaint in [
        (["--token-file", str(tmp_path / "missing")], "cannot read the access token file"),
        (["--token-file", str(path), "--token", "x"], "not allowed with argument"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            parse(["join", *argv])
        assert exit_info.value.code == 2
        assert complaint in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["join", "--help"])
    assert "$MESHPEER_TOKEN or --token-file" in " ".join(capsys.readouterr().out.split())


def test_a_bad_ice_server_url_is_reported_without_its_password(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "turn:alice:s3cret-pw@bad host:3478"
    assert peer.cli.main(["serve", "--ice-server", bad]) == 2
    assert "bad ICE server" in caplog.text and "s3cret-pw" not in caplog.text
    assert peer.cli.main(["join", "--ice-server", bad, "--duration", "1"]) == 1
    err = capsys.readouterr().err
    assert "bad ICE server" in err and "s3cret-pw" not in err
