"""Session 6 attacks on Network.create's `subnet`, on the fake engine: a subnet that the
host already routes (its uplink, an engine's bridge), link-local or "this network", or
one overlapping a network the engine has, must be InvalidSpec naming `subnet` before
any engine is touched; otherwise the engine puts the host's own addresses (say, its
default gateway's) on a sandbox bridge."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import Network, _networks
from sandboxer.testing import FakeBackend


@pytest.fixture(autouse=True)
def only_fake(only_fake_engines: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The host: an uplink 192.168.77.0/24 and an engine bridge 10.213.0.0/16.
    routes = [ipaddress.IPv4Network("192.168.77.0/24"), ipaddress.IPv4Network("10.213.0.0/16")]
    monkeypatch.setattr(_networks, "host_routes", lambda: routes)
    yield
    FakeBackend.network_store.clear()


@pytest.mark.parametrize(
    "subnet",
    [
        "192.168.77.0/24",  # the host's uplink: its default gateway would be the bridge
        "192.168.77.128/28",  # inside the uplink
        "10.213.5.0/24",  # inside an engine's bridge
        "169.254.0.0/16",  # link-local (is_private, yet no subnet for a bridge)
        "0.0.0.0/16",  # "this network" (is_private too)
    ],
)
def test_a_subnet_the_host_uses_or_cannot_route_is_refused(subnet: str) -> None:
    with pytest.raises(sandboxer.InvalidSpec, match=r"^subnet"):
        Network.create("n", backend="fake", subnet=subnet)
    assert FakeBackend.network_store == {}


def test_a_subnet_overlapping_another_network_of_the_engine_is_refused() -> None:
    Network.create("first", backend="fake", subnet="10.150.0.0/16")
    with pytest.raises(sandboxer.InvalidSpec, match=r"^subnet"):
        Network.create("second", backend="fake", subnet="10.150.7.0/24")
    assert list(FakeBackend.network_store) == ["first"]
