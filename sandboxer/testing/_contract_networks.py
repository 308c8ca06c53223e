"""Contract: members of a named network reach each other by sandbox name, and nobody
else reaches them; an internal network gives no way to the host or out.

One test, three sandboxes (a VM boots three times in it). Listing, foreign networks and
gc are engine calls only, in integration/test_networks.py.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import sandboxer
from sandboxer import Network, Sandbox

from . import contract

PORT = 8080
MakeNetwork = Callable[..., Network]


def address_of(sandbox: Sandbox) -> str:
    """The sandbox's one IPv4 address besides loopback (it is on one network only), from
    the kernel's own table: images need not have `ip`."""
    lines = sandbox.exec(["cat", "/proc/net/fib_trie"]).check().stdout.decode().splitlines()
    local = {lines[i - 1].split()[-1] for i, line in enumerate(lines) if "/32 host LOCAL" in line}
    outside = sorted(a for a in local if not ipaddress.ip_address(a).is_loopback)
    assert len(outside) == 1, lines
    return outside[0]


def connects(sandbox: Sandbox, address: str, port: int) -> bool:
    """Whether a TCP connect from inside the sandbox reaches address:port (busybox nc,
    else python3), given 2 s."""
    python = f"import socket; socket.create_connection(('{address}', {port}), 2)"
    script = (
        f"if command -v nc >/dev/null; then nc -w 2 {address} {port} </dev/null; "
        f'else python3 -c "{python}"; fi'
    )
    return sandbox.exec(["sh", "-c", script], timeout=30).exit_code == 0


def default_routes(sandbox: Sandbox) -> list[str]:
    """The sandbox's IPv4 default routes, from the kernel's table (/proc/net/route)."""
    lines = sandbox.exec(["cat", "/proc/net/route"]).check().stdout.decode().splitlines()
    return [line for line in lines[1:] if line.split()[1:2] == ["00000000"]]


def serve_text(sandbox: Sandbox, text: str) -> None:
    sandbox.exec(["mkdir", "-p", "/tmp/www"]).check()
    sandbox.write_file("/tmp/www/index.html", text.encode())
    contract.serve_http(sandbox, PORT, "/tmp/www")
    sandbox.wait_for_port(PORT, timeout=60)


def fetch_text(sandbox: Sandbox, address: str) -> bytes:
    return sandbox.exec(contract.fetch_command(address, PORT, "/index.html"), timeout=30).stdout


def host_addresses() -> list[str]:
    lines = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    found = {line.split()[3].split("/")[0] for line in lines}
    return sorted(a for a in found if not ipaddress.ip_address(a).is_loopback)


class NetworksContract:
    """Mixed into `EngineContract`: traffic between sandboxes needs real engines."""

    @pytest.fixture
    def network(self, backend: str) -> Iterator[MakeNetwork]:
        """Creates networks that go after the test's sandboxes (set up first, torn down
        last); each must then be gone."""
        made: list[Network] = []

        def create(**fields: Any) -> Network:
            name = f"sbx-net-{uuid.uuid4().hex[:10]}"
            made.append(Network.create(name, backend=backend, **fields))
            return made[-1]

        yield create
        for network in made:
            network.remove()
            assert network.name not in [n.name for n in Network.list(backend)]

    def test_members_reach_each_other_by_name_and_nobody_else_reaches_them(
        self, network: MakeNetwork, make: contract.Make, backend: str
    ) -> None:
        shared = network(internal=True)
        other = network(internal=True)
        assert shared.internal and shared.ours and shared.backend == backend
        server = make(networks=[shared])
        client = make(networks=[shared.name])
        outsider = make(networks=[other])
        for sandbox in (server, client, outsider):
            serve_text(sandbox, sandbox.name)

        # By name, both ways: the one made first learns of the later one too.
        assert server.name.encode() in fetch_text(client, server.name)
        assert client.name.encode() in fetch_text(server, client.name)

        # Another network's member reaches neither by name nor by address, nor is reached.
        for member in (server, client):
            assert member.name.encode() not in fetch_text(outsider, member.name)
            assert member.name.encode() not in fetch_text(outsider, address_of(member))
            assert outsider.name.encode() not in fetch_text(member, address_of(outsider))
            assert outsider.name.encode() not in fetch_text(member, outsider.name)

        # In use: refused, naming a sandbox on it.
        with pytest.raises(sandboxer.NetworkInUse, match=rf"{server.name}|{client.name}"):
            Network.get(shared.name, backend).remove()

    def test_an_internal_network_reaches_neither_the_host_nor_out(
        self, network: MakeNetwork, make: contract.Make
    ) -> None:
        internal = network(internal=True)
        member = make(networks=[internal])
        gateway = str(ipaddress.ip_network(internal.subnet).network_address + 1)
        with socket.socket() as listener:
            listener.bind(("0.0.0.0", 0))
            listener.listen(8)
            listener.settimeout(0.5)
            port = listener.getsockname()[1]
            # The probe works: the member reaches a port of its own.
            assert connects(member, "127.0.0.1", PORT) is False
            serve_text(member, "here")
            assert connects(member, "127.0.0.1", PORT)
            for address in [gateway, *host_addresses()]:
                assert not connects(member, address, port), address
            with pytest.raises(TimeoutError):
                listener.accept()
        assert default_routes(member) == []
