"""What the benchmark scripts share: free ports, waiting for a server, reading stats lines.

Benchmarks run as scripts (``./dev bench NAME``), so this sits beside them and each one
imports it after putting the repository on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support import free_port

__all__ = ["cpu_seconds", "free_port", "last_json_line", "wait_listening"]

_TICKS = os.sysconf("SC_CLK_TCK")


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
