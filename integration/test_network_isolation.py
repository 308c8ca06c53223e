"""Networks keep what their names promise, tried from inside on every backend.

isolated: the sandbox reaches no address of the host, not even a service listening on
0.0.0.0, neither through its gateway (or where a bridge's host side would be) nor at the
host's own addresses. bridge: sandboxes on it cannot reach each other.

Traffic goes only to this host's own addresses and to our own sandboxes: every attempt
either stays on the machine or goes nowhere.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import Sandbox

CONNECT_SECONDS = 2
PORT = 8080


def _ipv4_interfaces(sandbox: Sandbox) -> list[ipaddress.IPv4Interface]:
    """The sandbox's own IPv4 addresses with their prefixes, loopback left out."""
    lines = sandbox.exec(["ip", "-4", "-o", "addr"]).stdout.decode().splitlines()
    found = [ipaddress.IPv4Interface(line.split()[3]) for line in lines if " inet " in line]
    return [interface for interface in found if not interface.ip.is_loopback]


def _gateways(sandbox: Sandbox) -> set[str]:
    words = sandbox.exec(["ip", "-4", "route"]).stdout.decode().split()
    return {words[i + 1] for i, word in enumerate(words[:-1]) if word == "via"}


def _host_addresses() -> set[str]:
    lines = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    addresses = {line.split()[3].split("/")[0] for line in lines}
    return {a for a in addresses if not ipaddress.ip_address(a).is_loopback}


def _near(interface: ipaddress.IPv4Interface) -> set[str]:
    """Where a bridge's host side, or a user-mode network's host alias, would sit."""
    hosts = list(interface.network.hosts())[:2]
    return {str(address) for address in hosts if address != interface.ip}


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A host service on 0.0.0.0 and a free port, closed when the test ends."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    server.settimeout(0.5)
    try:
        yield server
    finally:
        server.close()


def _accepted(server: socket.socket) -> list[str]:
    """Connections the kernel completed for the listener (read once every try is over)."""
    peers: list[str] = []
    while True:
        try:
            connection, peer = server.accept()
        except TimeoutError:
            return peers
        connection.close()
        peers.append(peer[0])


def _connects(sandbox: Sandbox, addresses: list[str], port: int) -> list[str]:
    """The addresses a TCP connect from inside the sandbox reached, each try bounded."""
    tries = "".join(
        f"if echo | timeout {CONNECT_SECONDS + 1} nc -w {CONNECT_SECONDS} {a} {port}; "
        f"then echo REACHED {a}; fi; "
        for a in addresses
    )
    result = sandbox.exec(["sh", "-c", tries], timeout=len(addresses) * 5 + 10)
    assert not result.timed_out, result
    return [line.split()[1] for line in result.stdout.decode().splitlines() if "REACHED" in line]


@pytest.fixture(scope="class")
def pair(backend: str) -> Iterator[tuple[Sandbox, Sandbox]]:
    with (
        sandboxer.launch(backend=backend, network="bridge") as server,
        sandboxer.launch(backend=backend, network="bridge") as client,
    ):
        # busybox httpd puts itself in the background and serves /etc.
        assert server.exec(["httpd", "-p", str(PORT), "-h", "/etc"]).exit_code == 0
        yield server, client


class TestIsolated:
    def test_no_host_address_answers(self, backend: str, listener: socket.socket) -> None:
        port = listener.getsockname()[1]
        with sandboxer.launch(backend=backend, network="isolated") as sandbox:
            interfaces = _ipv4_interfaces(sandbox)
            targets = _gateways(sandbox) | _host_addresses()
            for interface in interfaces:
                targets |= _near(interface)
            reached = _connects(sandbox, sorted(targets), port)
        assert not reached, f"reached the host from an isolated sandbox at {reached}"
        assert not _accepted(listener)


class TestBridge:
    def test_the_server_answers_on_its_own_addresses(self, pair: tuple[Sandbox, Sandbox]) -> None:
        server, _ = pair
        addresses = ["127.0.0.1", *(str(i.ip) for i in _ipv4_interfaces(server))]
        assert _connects(server, addresses, PORT) == addresses  # so a refusal below means it

    def test_another_sandbox_cannot_reach_it(self, pair: tuple[Sandbox, Sandbox]) -> None:
        server, client = pair
        addresses = [str(i.ip) for i in _ipv4_interfaces(server)]
        assert addresses, "the server has no address on the bridge"
        assert _connects(client, addresses, PORT) == []
