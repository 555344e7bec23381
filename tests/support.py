"""Helpers shared by every test layer: scaled timeouts and a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

from aiohttp import web

from signaling.registry import Registry
from signaling.server import ServerConfig, SignalingServer

REPO = Path(__file__).resolve().parents[1]

#: Every timeout in the tests is a multiple of this unit: MESHPEER_TEST_SCALE=3 on a slow box.
TIME_SCALE = float(os.environ.get("MESHPEER_TEST_SCALE", "1"))


T = TypeVar("T")


def seconds(value: float) -> float:
    """``value`` seconds, stretched by MESHPEER_TEST_SCALE."""
    return value * TIME_SCALE


class Timeout(AssertionError):
    """A wait that ran out; the message names what it waited for."""


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]], limit: float, what: str, interval: float = ...
) -> T: ...
@overload
async def eventually(
    check: Callable[[], T | None], limit: float, what: str, interval: float = ...
) -> T: ...
async def eventually(
    check: Callable[[], Any], limit: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy, and return that;
    fail naming ``what`` after ``limit`` s. The caller scales ``limit`` (``seconds(10)``),
    except for a wait that races a fixed product timer, which is derived from that timer."""
    deadline = time.monotonic() + limit
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {limit:.1f} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


def interruptible() -> None:
    """``preexec_fn`` of a child that a test stops with SIGINT (Ctrl-C) and that relies on
    Python's KeyboardInterrupt: a test run started in the background by a shell without job
    control ignores SIGINT, its children inherit that, and Python then installs no handler
    (the child would never exit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def terminate(proc: subprocess.Popen[Any], timeout: float = 3.0) -> None:
    """Stop a child process: SIGTERM, SIGKILL if it is still there after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningServer:
    server: SignalingServer
    runner: web.AppRunner
    port: int
    host: str = "127.0.0.1"

    @property
    def netloc(self) -> str:
        """``host:port`` as a URL (and a browser's ``Host``) writes it: ``[::1]:8080``."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.netloc}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.netloc}/ws"


@asynccontextmanager
async def running_server(
    config: ServerConfig | None = None, registry: Registry | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[RunningServer]:
    """A real SignalingServer on an ephemeral port of ``host``, shut down gracefully after."""
    server = SignalingServer(config, registry)
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=seconds(2))
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
    port = sockets[0].getsockname()[1]
    try:
        yield RunningServer(server, runner, port, host)
    finally:
        await runner.cleanup()


def reference_server_binary() -> Path:
    """The reference Go server, built by ./dev (MESHPEER_REFERENCE_DIR) or here from
    MESHPEER_SHARED (default ../shared). Missing sources fail the test with the reason: a
    compatibility test that skips itself proves nothing."""
    built = os.environ.get("MESHPEER_REFERENCE_DIR")
    folder = Path(built) if built else REPO / ".cache" / "reference"
    binary = folder / "seed-server-env"
    if binary.exists():
        return binary
    shared = Path(os.environ.get("MESHPEER_SHARED", REPO.parent / "shared"))
    build = shared / "reference" / "seed-go-server" / "build.sh"
    if not build.exists():
        raise AssertionError(
            f"no reference server at {binary} and no sources at {build}: run ./dev setup, or "
            "set MESHPEER_SHARED to the shared/ folder"
        )
    if shutil.which("go") is None:
        raise AssertionError("building the reference server needs Go: run ./dev setup")
    subprocess.run(["sh", str(build), str(folder)], check=True, capture_output=True, timeout=300)
    return binary


def percentile(samples: list[float], share: float) -> float:
    """The ``share`` (0.99: p99) quantile of ``samples``; 0 without any."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


class LoopLag:
    """How late the event loop runs a task: a probe sleeping ``interval`` again and again
    records each wake-up's overshoot (seconds) in ``samples``. ``async with`` runs it."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _probe(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.samples.append(time.perf_counter() - start - self.interval)

    def percentile(self, share: float) -> float:
        """The ``share`` (0.99: p99) quantile of the lags so far; 0 without samples."""
        return percentile(self.samples, share)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._probe())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class ThreadLag:
    """How late a plain thread wakes from ``time.sleep(interval)``: the machine's own delay
    (CPU shared with other processes, the GIL) in the same window as a :class:`LoopLag`,
    so a test tells what its event loop adds from what a busy machine costs everyone."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, name="thread-lag", daemon=True)

    def _probe(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            time.sleep(self.interval)
            self.samples.append(time.perf_counter() - start - self.interval)

    def percentile(self, share: float) -> float:
        return percentile(self.samples, share)

    def __enter__(self) -> ThreadLag:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
