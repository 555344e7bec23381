"""The namespace topology isolates clients from each other but not from the hub's services,
and coturn starts inside it: the ground the NAT/TURN tests stand on."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.net.coturn import rest_credentials, running_coturn, stun_probe
from tests.net.topology import Topology, call_in, topology


def _udp(ns: str) -> socket.socket:
    return call_in(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))


def _arrives(topo: Topology, src: str, dst_ns: str, dst: str, timeout: float = 0.3) -> bool:
    """Does one UDP datagram from namespace ``src`` reach ``dst`` (bound inside ``dst_ns``)?"""
    with _udp(dst_ns) as receiver, _udp(src) as sender:
        receiver.bind(("0.0.0.0", 0))
        receiver.settimeout(timeout)
        try:
            sender.sendto(b"ping", (dst, receiver.getsockname()[1]))
        except OSError:
            return False
        try:
            return receiver.recv(16) == b"ping"
        except TimeoutError:
            return False


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.usefixtures("netns")
def test_clients_reach_the_hub_but_not_each_other() -> None:
    with topology(2) as topo:
        one, two = topo.clients
        assert _arrives(topo, one.ns, topo.hub, topo.service_addr)
        assert _arrives(topo, two.ns, topo.hub, topo.service_addr)
        assert not _arrives(topo, one.ns, two.ns, two.addr)  # no route at all
        # Even with a route through the hub: it does not forward.
        topo.run(one.ns, ["ip", "route", "add", two.addr, "via", one.gateway])
        assert not _arrives(topo, one.ns, two.ns, two.addr)
        assert not _arrives(topo, one.ns, topo.hub, topo.dead_addr)


@pytest.mark.usefixtures("netns")
def test_cut_and_heal() -> None:
    with topology(1) as topo:
        (client,) = topo.clients
        topo.cut(client.ns)
        assert not _arrives(topo, client.ns, topo.hub, topo.service_addr)
        topo.heal(client.ns)
        assert _arrives(topo, client.ns, topo.hub, topo.service_addr)


@pytest.mark.usefixtures("netns")
def test_coturn_answers_stun_from_a_client_and_everything_is_removed_after() -> None:
    with topology(2) as topo, running_coturn(topo) as turn:
        names = set(topo.namespaces)
        assert names <= _namespaces()
        for client in topo.clients:
            mapped = stun_probe(client.ns, turn.addr, turn.port)
            assert mapped is not None and mapped[0] == client.addr, turn.log()
        assert stun_probe(topo.clients[0].ns, topo.dead_addr, turn.port, timeout=0.3) is None
    assert turn.proc.poll() is not None
    assert not names & _namespaces()


def test_rest_credentials_match_coturn_convention() -> None:
    username, credential = rest_credentials("s3cret", "alice", ttl=3600, now=1_700_000_000.5)
    assert username == "1700003600:alice"
    # python -c 'import hmac,hashlib,base64; print(base64.b64encode(hmac.new(
    #   b"s3cret", b"1700003600:alice", hashlib.sha1).digest()).decode())'
    assert credential == "YAFdW/YDZewZsR1QSgUk2IrfbRI="
