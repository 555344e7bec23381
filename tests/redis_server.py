"""A real, empty redis-server on a free 127.0.0.1 port, started and stopped by the tests.

Started by us in the foreground with every option on the command line (no config file, no
persistence, its own temporary --dir), so tests never depend on the system service that
Debian's package starts on 6379. ``stop()`` and ``start()`` take it away and bring it back
on the same port, for tests of a registry that loses its Redis for a while.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import free_port, seconds, terminate

HOST = "127.0.0.1"


class PortInUse(RuntimeError):
    """redis-server exited at start because its port was taken."""


def redis_server_binary() -> str:
    """The redis-server executable; a missing one fails with the reason instead of skipping
    (a registry test that skips itself proves nothing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server not found (Debian package redis-server): run ./dev setup as root"
        )
    return binary


def ping(port: int, timeout: float = 0.2) -> bool:
    """Whether a Redis on ``HOST:port`` answers PING with PONG (inline command, raw socket)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(64)
                if not chunk:
                    return False
                reply += chunk
            return reply == b"+PONG\r\n"
    except OSError:
        return False


@dataclass
class RedisServer:
    """One redis-server process on a fixed port: its URL, and stop()/start() for outages."""

    binary: str
    port: int
    workdir: Path
    ready_timeout: float
    extra_args: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, for ``redis.asyncio.Redis.from_url``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything redis-server printed so far, over every start (kept after it stops)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Start redis-server on ``port`` (again) and return once it answers PING.

        An empty database every time: nothing is saved between runs.
        """
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        argv = [
            self.binary,
            "--port", str(self.port), "--bind", HOST,
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--daemonize", "no", "--logfile", "",
            *self.extra_args,
        ]  # fmt: skip
        log_start = len(self.log())
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + self.ready_timeout
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                code = self.proc.poll()
                self.stop()
                output = self.log()[log_start:]
                error = PortInUse if "Address already in use" in output else RuntimeError
                raise error(
                    f"redis-server not answering PING on {HOST}:{self.port} "
                    f"(exit {code}):\n{output[-3000:]}"
                )
            time.sleep(0.01)

    def stop(self) -> None:
        """Terminate redis-server (SIGTERM, SIGKILL after 3 s) and wait for it; clients see
        their connections closed and new ones refused. Does nothing when already stopped."""
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc)


@contextlib.contextmanager
def running_redis(
    *, ready_timeout: float | None = None, extra_args: Sequence[str] = (), attempts: int = 3
) -> Iterator[RedisServer]:
    """An empty redis-server on a free 127.0.0.1 port, answering PING on entry, terminated
    (and its temporary --dir removed) on exit, whatever the test did with stop()/start().

    Usable from sync and async tests alike (start-up blocks for a few milliseconds). The free
    port can be taken by someone else before redis-server binds it: it then exits at once,
    and we try again on another port (``attempts`` in all).
    """
    binary = redis_server_binary()
    timeout = ready_timeout if ready_timeout is not None else seconds(5)
    workdir = Path(tempfile.mkdtemp(prefix="meshpeer-redis-"))
    server: RedisServer | None = None
    try:
        for attempt in range(attempts):
            server = RedisServer(binary, free_port(), workdir, timeout, tuple(extra_args))
            try:
                server.start()
                break
            except PortInUse:
                if attempt == attempts - 1:
                    raise
        assert server is not None
        yield server
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
