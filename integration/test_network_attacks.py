"""Attacks on internal named networks from a member that may change its own routes.

The member runs under the "default" profile (root, where the engine grants it the
capability to set routes), points a default route at its network's gateway, and then
tries to reach a sandbox on the engine's "bridge" network and a host service. Both must
stay out of reach: the host routes nothing from an internal bridge and answers only DNS.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import Network, Sandbox
from sandboxer.backend import gateway as gateway_of
from sandboxer.testing import contract  # noqa: F401 - loads the contract before its parts
from sandboxer.testing._contract_networks import connects, fetch_text, host_addresses, serve_text


@pytest.fixture
def internal(backend: str) -> Iterator[Network]:
    network = Network.create(f"sbx-attack-{uuid.uuid4().hex[:8]}", backend=backend, internal=True)
    yield network
    network.remove()


def _bridge_address(sandbox: Sandbox) -> str:
    lines = sandbox.exec(["ip", "-4", "-o", "addr"]).stdout.decode().splitlines()
    found = [line.split()[3].split("/")[0] for line in lines if " inet " in line]
    outside = [a for a in found if not a.startswith("127.")]
    assert outside, lines
    return outside[0]


def test_a_member_routing_through_its_gateway_reaches_nothing(
    backend: str, internal: Network
) -> None:
    gateway = str(gateway_of(internal.subnet).ip)
    with (
        sandboxer.launch(backend=backend, network="bridge") as target,
        sandboxer.launch(
            backend=backend, profile="default", network="none", networks=[internal]
        ) as member,
        socket.socket() as listener,
    ):
        serve_text(target, target.name)
        listener.bind(("0.0.0.0", 0))
        listener.listen(8)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        # What a member with the capability would do; without it, the route stays absent.
        member.exec(["ip", "route", "replace", "default", "via", gateway])
        routes = member.exec(["ip", "-4", "route"]).stdout.decode()
        assert target.name.encode() not in fetch_text(member, _bridge_address(target)), routes
        for address in host_addresses():
            assert not connects(member, address, port), (address, routes)
        with pytest.raises(TimeoutError):
            listener.accept()
