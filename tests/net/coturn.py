"""A real coturn TURN server inside a topology's hub, with REST (shared-secret) credentials.

Started by us in the foreground with every option on the command line (``-n``: no config
file), so tests never depend on a system turnserver service or /etc/turnserver.conf.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.net.topology import Topology, call_in
from tests.support import terminate

REALM = "meshpeer.test"
_MAGIC = 0x2112A442
_XOR_MAPPED_ADDRESS = 0x0020
_BINDING_REQUEST = 0x0001
_BINDING_SUCCESS = 0x0101


def rest_credentials(secret: str, peer_id: str, ttl: float, now: float) -> tuple[str, str]:
    """coturn's TURN REST convention (``--use-auth-secret``): (username, credential).

    username is ``"<unix expiry>:<peer id>"``, credential base64(HMAC-SHA1(secret, username)).
    For experiments only; the project has its own implementation in signaling/.
    """
    username = f"{int(now + ttl)}:{peer_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def binding_request(transaction_id: bytes) -> bytes:
    """A bare STUN Binding request (RFC 5389), enough to see that a server answers."""
    return struct.pack("!HHI12s", _BINDING_REQUEST, 0, _MAGIC, transaction_id)


def parse_binding_response(data: bytes, transaction_id: bytes) -> tuple[str, int] | None:
    """The XOR-MAPPED-ADDRESS (IPv4) of a Binding success for ``transaction_id``, else None."""
    if len(data) < 20:
        return None
    kind, length, magic, tid = struct.unpack("!HHI12s", data[:20])
    if kind != _BINDING_SUCCESS or magic != _MAGIC or tid != transaction_id:
        return None
    pos, end = 20, min(len(data), 20 + length)
    while pos + 4 <= end:
        attr, size = struct.unpack("!HH", data[pos : pos + 4])
        value = data[pos + 4 : pos + 4 + size]
        if attr == _XOR_MAPPED_ADDRESS and size >= 8 and value[1] == 0x01:
            port = struct.unpack("!H", value[2:4])[0] ^ (_MAGIC >> 16)
            raw = struct.unpack("!I", value[4:8])[0] ^ _MAGIC
            return socket.inet_ntoa(struct.pack("!I", raw)), port
        pos += 4 + size + (-size % 4)
    return None


def stun_probe(ns: str, addr: str, port: int, timeout: float = 1.0) -> tuple[str, int] | None:
    """Send a Binding request from inside ``ns``; the mapped address, or None if no answer."""
    sock = call_in(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sock:
        tid = secrets.token_bytes(12)
        deadline = time.monotonic() + timeout
        # Resend every 100 ms: the first packet can race the server's socket setup.
        while (left := deadline - time.monotonic()) > 0:
            try:
                sock.sendto(binding_request(tid), (addr, port))
            except OSError:
                return None
            sock.settimeout(min(0.1, left))
            try:
                while True:
                    mapped = parse_binding_response(sock.recv(2048), tid)
                    if mapped is not None:
                        return mapped
            except (TimeoutError, ConnectionRefusedError):
                continue
    return None


@dataclass
class Coturn:
    """A running turnserver: its address, port and shared secret, and its log."""

    proc: subprocess.Popen[bytes]
    addr: str
    port: int
    secret: str
    realm: str
    log_path: Path
    _final_log: str | None = None

    def url(self, transport: str = "udp") -> str:
        """``turn:ADDR:PORT?transport=udp|tcp`` (credentials go in RTCIceServer fields)."""
        return f"turn:{self.addr}:{self.port}?transport={transport}"

    def credentials(self, peer_id: str, ttl: float = 3600) -> tuple[str, str]:
        """REST credentials this server accepts now."""
        return rest_credentials(self.secret, peer_id, ttl, time.time())

    def log(self) -> str:
        """Everything turnserver printed so far (kept after it stops)."""
        if self._final_log is not None:
            return self._final_log
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def running_coturn(
    topo: Topology,
    *,
    port: int = 3478,
    secret: str | None = None,
    realm: str = REALM,
    ready_timeout: float = 5.0,
    extra_args: Sequence[str] = (),
) -> Iterator[Coturn]:
    """turnserver on ``topo.service_addr:port`` in the hub, ready (answers STUN) on entry.

    UDP and TCP listeners, UDP relays on the service address, peers in private ranges
    allowed (coturn only denies what ``--denied-peer-ip`` lists; we list none).
    """
    binary = shutil.which("turnserver")
    if binary is None:
        raise RuntimeError("turnserver not found (Debian package coturn)")
    secret = secret if secret is not None else secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="meshpeer-coturn-"))
    log_path = workdir / "turnserver.log"
    argv = [
        binary, "-n",
        "--use-auth-secret", f"--static-auth-secret={secret}", f"--realm={realm}",
        f"--listening-ip={topo.service_addr}", f"--relay-ip={topo.service_addr}",
        f"--listening-port={port}", "--min-port=49152", "--max-port=49999",
        "--no-tls", "--no-dtls", "--no-cli", "--no-rfc5780", "--no-multicast-peers",
        # -v: without it coturn 4.6 logs no sessions, allocations or auth failures at all.
        "-v", "--log-file=stdout", "--simple-log",
        # Keep it off the system's files: its own pid file and (unused) user database.
        f"--pidfile={workdir / 'turnserver.pid'}", f"--userdb={workdir / 'turndb'}",
        *extra_args,
    ]  # fmt: skip
    with open(log_path, "wb") as log_file:
        proc: subprocess.Popen[bytes] = topo.spawn(
            topo.hub, argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = Coturn(proc, topo.service_addr, port, secret, realm, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while stun_probe(topo.hub, topo.service_addr, port, timeout=0.2) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"turnserver not answering STUN on {topo.service_addr}:{port} "
                    f"(exit {proc.poll()}):\n{server.log()[-3000:]}"
                )
        yield server
    finally:
        terminate(proc)
        server._final_log = server.log()
        shutil.rmtree(workdir, ignore_errors=True)
