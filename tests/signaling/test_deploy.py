"""deploy/: the systemd unit passes ``systemd-analyze verify`` and its hardening is scored;
its ``meshpeer serve`` command runs behind the nginx example (TLS, WebSocket, --trust-proxy)
with clients from several loopback addresses, each counted by the address nginx saw."""

from __future__ import annotations

import asyncio
import re
import secrets
import shlex
import shutil
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from signaling.auth import mint_token
from tests.signaling.processes import make_certificate, server_process
from tests.support import REPO, eventually, free_port, seconds

UNIT = REPO / "deploy" / "meshpeer.service"
NGINX = REPO / "deploy" / "nginx.conf"
#: Where the unit expects the installed command; the tests put this checkout's in its place.
INSTALLED = "/opt/meshpeer/bin/meshpeer"
#: The worst `systemd-analyze security` exposure the unit may have (0 best, 10 worst);
#: measured 1.1 ("OK").
MAX_EXPOSURE = 2.0


def tool(name: str, package: str) -> str:
    """The path of a Debian tool the test needs; fails naming its package when missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is missing: apt-get install {package} (in ./dev's TEST_DEBS)")
    return path


def unit_settings(text: str) -> list[tuple[str, str]]:
    """A unit file's ``Key=value`` lines in order, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = (line.strip() for line in joined.splitlines())
    pairs = (line.split("=", 1) for line in lines if "=" in line and line[0] not in "#;")
    return [(key.strip(), value.strip()) for key, value in pairs]


async def run(*command: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), seconds(60))
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_the_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    settings = dict(unit_settings(UNIT.read_text()))
    assert settings["DynamicUser"] == "yes"
    assert settings["LoadCredential"].startswith("auth-secret:")
    assert "--auth-secret-file %d/auth-secret" in settings["ExecStart"]
    assert "--trust-proxy" in settings["ExecStart"]
    # verify wants the command to exist: this checkout's, where the unit expects its own.
    installed = Path(sys.executable).parent / "meshpeer"
    assert installed.exists(), f"no {installed}: the venv lacks meshpeer's command"
    unit = tmp_path / "meshpeer.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(installed)))

    code, out = await run(analyze, "verify", str(unit))
    assert (code, out) == (0, ""), f"systemd-analyze verify: {out}"
    code, out = await run(analyze, "security", "--offline=true", "--no-pager", str(unit))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    assert code == 0 and found, out
    assert float(found[1]) <= MAX_EXPOSURE, out


@asynccontextmanager
async def nginx_in_front(
    directory: Path, upstream: int, port: int, cert: Path, key: Path
) -> AsyncIterator[None]:
    """deploy/nginx.conf run by nginx as it is, but for its addresses: TLS on 127.0.0.1:``port``
    (the redirect on a free port), to the server on ``upstream``, with this test's certificate;
    in a main configuration of the test's own (no system files, no daemon)."""
    binary = tool("nginx", "nginx")
    site = NGINX.read_text()
    site = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", site)  # no IPv6 needed on loopback
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};")
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
    (directory / "site.conf").write_text(site)
    temp = " ".join(
        f"{kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        f"pid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} warn;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{ access_log off; {temp} include {directory / 'site.conf'}; }}\n"
    )
    config = ["-p", str(directory), "-c", str(directory / "nginx.conf")]
    code, out = await run(binary, "-t", *config)
    assert code == 0, f"nginx -t refuses the example: {out}"
    proc = await asyncio.create_subprocess_exec(
        binary, *config, "-g", "daemon off; master_process off;",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip

    async def listening() -> bool:
        assert proc.returncode is None, (directory / "error.log").read_text()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    try:
        await eventually(listening, seconds(10), "nginx listening")
        yield
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), seconds(10))


async def test_the_unit_command_behind_the_nginx_example(tmp_path: Path) -> None:
    """Clients from 127.0.0.2 and 127.0.0.3 reach the server only through nginx (127.0.0.1):
    with --trust-proxy each is counted by its own address, and a forged X-Forwarded-For
    changes nothing, since the server reads the entry nginx appended."""
    settings = dict(unit_settings(UNIT.read_text()))
    proxy_port = free_port()
    page = f"https://127.0.0.1:{proxy_port}"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret = secrets.token_urlsafe(48).encode()
    (credentials / "auth-secret").write_bytes(secret + b"\n")
    argv = shlex.split(settings["ExecStart"].replace("%d", str(credentials)))
    assert argv[0] == INSTALLED, argv
    argv = [a if a != "https://rooms.example.com/" else page + "/" for a in argv]
    # This checkout's meshpeer; one WebSocket per client address, so counting shows.
    command = [sys.executable, "-m", "peer", *argv[1:], "--ip-connections", "1"]
    cert, key = make_certificate(tmp_path)
    tls = ssl.create_default_context(cafile=str(cert))
    url = f"wss://127.0.0.1:{proxy_port}/ws"
    origin = {"Origin": page}

    def session(address: str) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(local_addr=(address, 0), ssl=tls)
        return aiohttp.ClientSession(connector=connector)

    (tmp_path / "nginx").mkdir()
    async with (
        server_process(command) as server,
        nginx_in_front(tmp_path / "nginx", server.port, proxy_port, cert, key),
        session("127.0.0.2") as two,
        session("127.0.0.3") as three,
        session("127.0.0.1") as inside,
    ):
        first = await two.ws_connect(url, headers=origin)
        token = mint_token(secret, "lobby", "alice")
        await first.send_json({"type": "join", "peerId": "alice", "room": "lobby", "token": token})
        assert (await first.receive_json(timeout=seconds(5)))["type"] == "peer-list"
        other = await three.ws_connect(url, headers=origin)  # another address: admitted
        with pytest.raises(aiohttp.WSServerHandshakeError) as again:
            forged = {**origin, "X-Forwarded-For": "10.9.8.7"}
            await two.ws_connect(url, headers=forged)  # 127.0.0.2's second: over its cap
        assert again.value.status == 429
        async with two.get(f"{page}/metrics") as outside:
            assert outside.status == 403  # nginx keeps /metrics inside
        async with inside.get(f"{page}/metrics") as scrape:
            assert scrape.status == 200
            assert 'meshpeer_refused_total{reason="ip-connections"} 1.0' in await scrape.text()
        await first.close()
        await other.close()
        assert await server.stop(signal.SIGTERM) == 0
    assert "refused a WebSocket from '127.0.0.2': ip-connections" in server.stderr, server.stderr
    assert "'alice' joined room 'lobby'" in server.stderr
