"""The signaling server as a real process (``python -m signaling``, ``meshpeer serve``),
waited for until /healthz answers, and a self-signed certificate for its TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.support import REPO, free_port, seconds


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: with `cryptography`, else `openssl req`."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.fail("neither the cryptography package nor openssl is available")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


class ServerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, scheme: str) -> None:
        self.proc = proc
        self.port = port
        self.scheme = scheme
        self.stderr = ""

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.scheme == 'https' else 'ws'}://127.0.0.1:{self.port}/ws"

    @property
    def health_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/healthz"

    async def stop(self, signum: int) -> int:
        """Send ``signum``; the exit code (the process must exit by itself)."""
        self.proc.send_signal(signum)
        _, err = await asyncio.wait_for(self.proc.communicate(), seconds(15))
        self.stderr = err.decode()
        assert self.proc.returncode is not None
        return self.proc.returncode


@asynccontextmanager
async def server_process(
    command: list[str], ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[ServerProcess]:
    """Start a server process on a free port and wait until /healthz answers."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *command,
        "--port",
        str(port),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    running = ServerProcess(proc, port, "https" if ssl_context else "http")
    try:
        deadline = asyncio.get_running_loop().time() + seconds(20)
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.returncode is not None:
                    _, err = await proc.communicate()
                    raise AssertionError(f"server exited early: {err.decode()}")
                try:
                    async with http.get(running.health_url, ssl=ssl_context or True) as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectorError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError("server never answered /healthz")
                await asyncio.sleep(0.05)
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()
