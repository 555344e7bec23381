"""A load balancer without sticky sessions, made by the kernel: new TCP connections to one
127.0.0.1 port go to several ports in turn (an nftables ``dnat ... numgen inc`` rule in
the output hook, so only this machine's own connections to that port are touched). For
tests and benchmarks of several server nodes; needs root and Debian's nftables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tests.support import free_port


def balancer_unavailable() -> str | None:
    """Why no balancer can be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (an nftables rule)"
    if shutil.which("nft") is None:
        return "no nft (apt-get install nftables)"
    return None


@contextmanager
def load_balancer(ports: Sequence[int]) -> Iterator[int]:
    """A port on 127.0.0.1 whose new connections go to ``ports`` in turn, removed on exit."""
    port = free_port()
    table = f"meshpeer_lb_{port}"
    targets = ", ".join(f"{i} : 127.0.0.1 . {p}" for i, p in enumerate(ports))
    commands = (
        f"add table ip {table}",
        f"add chain ip {table} out {{ type nat hook output priority -100; }}",
        f"add rule ip {table} out ip daddr 127.0.0.1 tcp dport {port} "
        f"dnat ip to numgen inc mod {len(ports)} map {{ {targets} }}",
    )
    try:
        for command in commands:
            done = subprocess.run(["nft", command], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"nft {command}: {done.stderr.strip()}")
        yield port
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)
