"""Network namespaces that isolate peers the way NATs do: each client reaches the hub's
service address and nothing else, so peers can only meet through a relay on the hub.

Layout (client i = 1..N, at most 250)::

    client i  eth0 10.77.i.2/30  --veth--  hub  c<i> 10.77.i.1/30
    hub: lo 10.77.0.1/32 (service address), ip_forward 0

Each client has a single route, to the service address (and to ``dead_addr``) via its hub
side; no default route. The hub does not forward, so clients cannot reach each other even
if they tried to route through it. Packets to ``dead_addr`` are dropped silently in the
hub: a stand-in for a server that does not answer.

Names carry the pid and a random suffix, so parallel and leftover runs never clash.
Everything runs ``ip``/``nft`` commands only, so the sync API is fine from async tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SERVICE_ADDR = "10.77.0.1"
DEAD_ADDR = "10.77.0.2"
PREFIX = "mp-"
_CLONE_NEWNET = 0x40000000
_STALE = re.compile(rf"^{PREFIX}(\d+)-[0-9a-f]+-")
#: Set (to anything but 0) on a machine that cannot have network namespaces: the tests that
#: need them skip with the reason instead of failing (tests/net/conftest.py).
NO_NETNS_ENV = "MESHPEER_TEST_NO_NETNS"


def _ip(*args: str, input: str | None = None) -> None:
    """Run one ``ip`` command, raising with its stderr (which says what was wrong)."""
    _check(["ip", *args], input=input)


def _check(argv: Sequence[str], input: str | None = None) -> None:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=10)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside network namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


def netns_wrapper(ns: str, binary: str, path: Path) -> Path:
    """Write an executable ``path`` that runs ``binary`` inside ``ns`` with its arguments.

    For tools that want an executable rather than an argv prefix, e.g. Playwright's
    ``executable_path`` (its pipe fds survive ``ip netns exec``, which execs in place).
    """
    path.write_text(f'#!/bin/sh\nexec ip netns exec {shlex.quote(ns)} {shlex.quote(binary)} "$@"\n')
    path.chmod(0o755)
    return path


def nft(ns: str, script: str) -> None:
    _check(exec_argv(ns, ["nft", "-f", "-"]), input=script)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces left by runs whose process is gone (a killed pytest skips finally)."""
    removed = []
    for name in _netns_names():
        match = _STALE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


@cache
def netns_available() -> str | None:
    """None when namespaces work here, else why not (the ``netns`` fixture's failure)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian iproute2 / nftables)"
    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}-probe"
    try:
        _ip("netns", "add", name)
        _ip("-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return f"no network namespace / veth support: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
    return None


def call_in(ns: str, fn: Callable[[], T]) -> T:
    """``fn()`` run on a thread that joined ``ns``: sockets it creates stay in ``ns``.

    Lets a test serve or probe from inside a namespace without a subprocess (e.g. a
    listening socket in the hub handed to ``aiohttp.web.SockSite``). Only the helper
    thread changes namespace; the caller's thread never does.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{ns}", "rb") as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({ns}): {os.strerror(errno)}")
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@dataclass(frozen=True)
class Client:
    """One client namespace: ``addr`` on its ``eth0``, ``gateway`` the hub side (``hub_if``)."""

    ns: str
    index: int
    addr: str
    gateway: str
    hub_if: str


@dataclass
class Topology:
    """A built topology; use ``topology()`` to get one that is torn down afterwards."""

    hub: str
    clients: list[Client]
    service_addr: str = SERVICE_ADDR
    dead_addr: str = DEAD_ADDR
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    def client(self, ns: str) -> Client:
        for client in self.clients:
            if client.ns == ns:
                return client
        raise KeyError(ns)

    def spawn(self, ns: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``ns``; it is killed at teardown if still running."""
        proc: subprocess.Popen[Any] = subprocess.Popen(exec_argv(ns, argv), **popen)
        self.processes.append(proc)
        return proc

    def run(
        self, ns: str, argv: Sequence[str], timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``ns`` to completion (output captured as text)."""
        return subprocess.run(exec_argv(ns, argv), capture_output=True, text=True, timeout=timeout)

    def cut(self, ns: str) -> None:
        """Silently drop all IP on client ``ns``'s link, both ways (no errors to senders).

        Ingress drops on both veth ends: an output drop would give the sender EPERM, which
        a real broken path never does. ARP still passes, so ``heal`` works at once instead
        of waiting for a failed neighbour entry to retry (~1 s).
        """
        client = self.client(ns)
        nft(client.ns, _ingress_drop("mp_cut", "eth0"))
        nft(self.hub, _ingress_drop(f"mp_cut_{client.hub_if}", client.hub_if))

    def heal(self, ns: str) -> None:
        """Undo ``cut``."""
        client = self.client(ns)
        nft(client.ns, "delete table netdev mp_cut\n")
        nft(self.hub, f"delete table netdev mp_cut_{client.hub_if}\n")

    def stop_processes(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
        self.processes.clear()

    @property
    def namespaces(self) -> list[str]:
        return [self.hub, *(client.ns for client in self.clients)]


def _ingress_drop(table: str, device: str) -> str:
    return (
        f"table netdev {table} {{\n"
        f"  chain in {{ type filter hook ingress device {device} priority 0; policy accept;\n"
        "    meta protocol { ip, ip6 } drop; }\n"
        "}\n"
    )


def _build(topo: Topology, created: list[str]) -> None:
    hub = topo.hub
    _ip("netns", "add", hub)
    created.append(hub)
    _ip("-n", hub, "link", "set", "lo", "up")
    _ip("-n", hub, "addr", "add", f"{topo.service_addr}/32", "dev", "lo")
    # A new namespace may inherit the host's ip_forward=1: set it, it is the whole point.
    _check(exec_argv(hub, ["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]))
    # Drop before routing: without forwarding the hub would answer ICMP unreachable.
    nft(
        hub,
        "table inet mp_dead {\n"
        "  chain pre { type filter hook prerouting priority -300; policy accept;\n"
        f"    ip daddr {topo.dead_addr} drop; }}\n"
        "}\n",
    )
    for client in topo.clients:
        _ip("netns", "add", client.ns)
        created.append(client.ns)
        _ip("-n", hub, "link", "add", client.hub_if, "type", "veth",
            "peer", "name", "eth0", "netns", client.ns)  # fmt: skip
        _ip("-n", hub, "addr", "add", f"{client.gateway}/30", "dev", client.hub_if)
        _ip("-n", hub, "link", "set", client.hub_if, "up")
        _ip("-n", client.ns, "link", "set", "lo", "up")
        _ip("-n", client.ns, "addr", "add", f"{client.addr}/30", "dev", "eth0")
        _ip("-n", client.ns, "link", "set", "eth0", "up")
        for addr in (topo.service_addr, topo.dead_addr):
            _ip("-n", client.ns, "route", "add", f"{addr}/32", "via", client.gateway)


@contextlib.contextmanager
def topology(clients: int = 2) -> Iterator[Topology]:
    """A hub plus ``clients`` client namespaces, all deleted (and processes killed) after."""
    if not 1 <= clients <= 250:
        raise ValueError("1..250 clients")
    remove_stale_namespaces()
    base = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    topo = Topology(
        hub=f"{base}-hub",
        clients=[
            Client(
                ns=f"{base}-c{i}",
                index=i,
                addr=f"10.77.{i}.2",
                gateway=f"10.77.{i}.1",
                hub_if=f"c{i}",
            )
            for i in range(1, clients + 1)
        ],
    )
    created: list[str] = []
    try:
        _build(topo, created)
        yield topo
    finally:
        topo.stop_processes()
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
