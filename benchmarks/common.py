"""What the benchmark scripts share: free ports, waiting for a server, reading stats lines.

Benchmarks run as scripts (``./dev bench NAME``), so this sits beside them and each one
imports it after putting the repository on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.support import REPO, free_port

__all__ = [
    "cpu_seconds",
    "free_port",
    "last_json_line",
    "machine_info",
    "reference_dir",
    "start_signaling",
    "stop_all",
    "wait_listening",
    "write_result",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def reference_dir() -> Path:
    """Where ./dev setup built the reference Go server and sigload (MESHPEER_REFERENCE_DIR)."""
    env = os.environ.get("MESHPEER_REFERENCE_DIR")
    return Path(env) if env else REPO / ".cache" / "reference"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 15.0) -> None:
    """Until 127.0.0.1:``port`` accepts connections; RuntimeError if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server not listening on port {port} after {timeout:g} s")


def last_json_line(path: Path) -> dict[str, Any] | None:
    """The newest complete JSON line of a ``--stats-json`` file (one being written is skipped)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            record: dict[str, Any] = json.loads(line)
            return record
        except ValueError:
            continue
    return None


def machine_info(load_before: tuple[float, float, float], started: float) -> dict[str, Any]:
    """The machine a run measured on: cores, load before and after, how long it took
    (``started``: time.monotonic()); ``noisy`` when it was busy before the run began (the
    benchmarks themselves keep about two processes busy)."""
    cores = os.cpu_count() or 1
    return {
        "cores": cores,
        "python": platform.python_version(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "seconds": round(time.monotonic() - started, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "noisy": load_before[0] > 0.5 * cores,
    }


def write_result(path: Path, result: dict[str, Any], *, announce: str = "wrote") -> None:
    """``result`` as indented JSON at ``path`` (its folder made if need be), said on stdout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{announce} {path}")


def start_signaling(port: int, *flags: str) -> subprocess.Popen[bytes]:
    """``python -m signaling`` on ``port``, warnings only, with ``flags``: a room of more
    bots than a browser mesh carries passes ``--max-peers`` (its default is 8)."""
    command = [sys.executable, "-m", "signaling", "--port", str(port), "--log-level", "WARNING"]
    return subprocess.Popen([*command, *flags], cwd=REPO, stdout=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM to all at once (they leave together), then SIGKILL whoever is still there
    after ``timeout`` seconds."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_redis(stack: ExitStack) -> tuple[subprocess.Popen[bytes], int]:
    """An empty redis-server on a free 127.0.0.1 port (no persistence, its own temporary
    --dir), answering once this returns, stopped by ``stack``: (process, port)."""
    workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--save", ""),
            *("--appendonly", "no", "--bind", "127.0.0.1", "--dir", workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(stop, proc)
    wait_listening(proc, port)
    return proc, port
