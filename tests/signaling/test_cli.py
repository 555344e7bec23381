"""The command line: flag validation in-process, and real server processes stopped by
SIGTERM and SIGINT (plain ws:// and TLS wss://)."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp
import pytest

import peer.cli
import signaling.cli
from signaling.session import Limits
from tests.signaling.clients import Peer, drain_until_close
from tests.signaling.processes import ServerProcess, make_certificate, server_process
from tests.support import free_port

Main = Callable[[Sequence[str]], int]


def signaling_main(argv: Sequence[str]) -> int:
    return signaling.cli.main(argv)


def meshpeer_serve(argv: Sequence[str]) -> int:
    return peer.cli.main(["serve", *argv])


@pytest.mark.parametrize("main", [signaling_main, meshpeer_serve], ids=["signaling", "meshpeer"])
@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--port", "http"], "--port: not an integer"),
        (["--port", "70000"], "--port: must be a TCP port"),
        (["--port", "-1"], "--port: must be at least 0"),
        (["--max-peers", "0"], "--max-peers: must be at least 1"),
        (["--max-frame-bytes", "-5"], "--max-frame-bytes: must be at least 1"),
        (["--send-queue", "1.5"], "--send-queue: not an integer"),
        (["--burst", "0"], "--burst: must be at least 1"),
        (["--heartbeat", "0"], "--heartbeat: must be more than 0"),
        (["--join-timeout", "soon"], "--join-timeout: not a number"),
        (["--probe-timeout", "-2"], "--probe-timeout: must be more than 0"),
        (["--rate", "nan"], "--rate: must be more than 0"),
        (["--rate", "inf"], "--rate: must be more than 0"),
        (["--byte-rate", "0"], "--byte-rate: must be more than 0"),
        (["--byte-burst", "1e6"], "--byte-burst: not an integer"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_flag_values_are_usage_errors(
    main: Main, argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert complaint in err
    assert "usage:" in err


@pytest.mark.parametrize("main", [signaling_main, meshpeer_serve], ids=["signaling", "meshpeer"])
def test_tls_flags_are_checked_before_serving(
    main: Main, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = str(free_port())
    assert main(["--port", port, "--certfile", str(tmp_path / "c.pem")]) == 2
    assert "--certfile and --keyfile go together" in caplog.text
    missing = ["--certfile", str(tmp_path / "none.pem"), "--keyfile", str(tmp_path / "none.key")]
    assert main(["--port", port, *missing]) == 2
    assert "cannot load TLS certificate" in caplog.text


def test_every_limit_has_a_flag() -> None:
    parser = peer.cli.build_parser()
    args = parser.parse_args(
        [
            "serve",
            "--host=127.0.0.2",
            "--port=9",
            "--max-frame-bytes=1000",
            "--max-peers=3",
            "--join-timeout=1.5",
            "--heartbeat=2.5",
            "--probe-timeout=0.5",
            "--rate=7",
            "--burst=9",
            "--byte-rate=5000.5",
            "--byte-burst=6000",
            "--send-queue=11",
            "--ice-server=stun:127.0.0.1:3478",
        ]
    )
    config = signaling.cli.config_from_args(args)
    limits = config.limits
    assert (args.host, args.port) == ("127.0.0.2", 9)
    assert (limits.max_frame_bytes, limits.max_peers, limits.burst, limits.send_queue) == (
        1000,
        3,
        9,
        11,
    )
    assert (limits.join_timeout, limits.heartbeat, limits.probe_timeout, limits.rate) == (
        1.5,
        2.5,
        0.5,
        7.0,
    )
    assert (limits.byte_rate, limits.byte_burst) == (5000.5, 6000)
    assert len(config.ice_servers) == 1
    defaults = signaling.cli.config_from_args(parser.parse_args(["serve"]))
    assert defaults.limits == Limits()


# ---------------------------------------------------------------------------
# Real processes


async def join_two_and_stop(
    server: ServerProcess, signum: int, ssl_context: ssl.SSLContext | None = None
) -> None:
    async with aiohttp.ClientSession() as http:
        opened: list[Peer] = []
        for name in ("first", "second"):
            ws = await http.ws_connect(server.ws_url, ssl=ssl_context or True)
            joined = Peer(ws, name)
            await joined.send(type="join", peerId=name)
            await joined.recv_type("peer-list")
            opened.append(joined)
        first, second = opened
        assert await first.recv() == {"type": "peer-joined", "peerId": "second"}
        assert (await first.roundtrip(second, text="over the process"))["from"] == "first"
        # Keep reading while the server stops, as real clients do (they answer its close).
        draining = [asyncio.create_task(drain_until_close(p)) for p in opened]
        assert await server.stop(signum) == 0
        results = await asyncio.gather(*draining)
    assert [code for _, code in results] == [1001, 1001]
    # Exactly one of the two saw the other leave before its own close.
    lefts = [frames for frames, _ in results]
    assert sorted(len(f) for f in lefts) == [0, 1]
    (only,) = lefts[0] + lefts[1]
    assert only["type"] == "peer-left"
    log = server.stderr
    assert log.count(" joined room 'default'") == 2, log
    assert log.count(" left room 'default' (shutdown)") == 2, log
    assert "Traceback" not in log


@pytest.mark.slow
async def test_python_m_signaling_stops_cleanly_on_sigterm() -> None:
    command = [sys.executable, "-m", "signaling", "--heartbeat", "30"]
    async with server_process(command) as server:
        await join_two_and_stop(server, signal.SIGTERM)
    assert f"signaling on ws://127.0.0.1:{server.port}/ws" in server.stderr


@pytest.mark.slow
async def test_meshpeer_serve_over_tls_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    meshpeer = Path(sys.executable).with_name("meshpeer")
    if not meshpeer.exists():
        pytest.fail("the meshpeer entry point is not installed (pip install -e .)")
    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    command = [str(meshpeer), "serve", "--certfile", str(cert), "--keyfile", str(key)]
    async with server_process(command, context) as server:
        # A client that does not trust the certificate is refused.
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(server.health_url)
        await join_two_and_stop(server, signal.SIGINT, context)
    assert f"signaling on wss://127.0.0.1:{server.port}/ws" in server.stderr
