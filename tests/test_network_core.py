"""The networks core on fake engines: subnets and addresses picked, the engine chosen by
where the networks are, and a launch refused before anything is made."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import ClassVar

import pytest

import sandboxer
from sandboxer import Network, SandboxSpec, _registry, _selector
from sandboxer._bridge_guard import _CHAINS, _wanted
from sandboxer._labels import MANAGED, NETWORKS
from sandboxer._launch import make_plan
from sandboxer._subnets import free_subnet, gateway, member_address
from sandboxer.testing import FakeBackend


class OtherFake(FakeBackend):
    """A second engine with networks of its own."""

    name: ClassVar[str] = "otherfake"
    network_store: ClassVar[dict[str, sandboxer.backend.NetworkInfo]] = {}


@pytest.fixture(autouse=True)
def two_fake_engines(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_registry, "_entry_points", dict)
    sandboxer.register_backend("otherfake", OtherFake)
    _selector._probe_cache.clear()
    yield
    sandboxer.unregister_backend("otherfake")
    FakeBackend.network_store.clear()
    OtherFake.network_store.clear()
    for name in list(FakeBackend.sandboxes):
        box = FakeBackend.sandboxes.pop(name)
        assert box is not None
    _selector._probe_cache.clear()


def test_a_free_subnet_overlaps_neither_engine_networks_nor_host_routes() -> None:
    taken = [f"10.{second}.0.0/16" for second in range(128, 191)]  # all but 10.191/16
    routes = [ipaddress.IPv4Network("10.191.0.0/17")]
    for _ in range(20):
        picked = free_subnet(taken, routes)
        assert picked.prefixlen == 24
        assert picked.subnet_of(ipaddress.IPv4Network("10.191.128.0/17"))


def test_no_free_subnet_is_an_error_not_an_overlap() -> None:
    with pytest.raises(sandboxer.SandboxError, match="no free /24"):
        free_subnet(["10.128.0.0/10"], [])


def test_member_addresses_are_never_the_gateway_nor_taken() -> None:
    subnet = "10.140.7.0/29"  # hosts .1-.6; .1 is the gateway
    taken = ["10.140.7.2", "10.140.7.3/29", "10.140.7.4"]
    picked = {str(member_address(subnet, taken).ip) for _ in range(50)}
    assert picked <= {"10.140.7.5", "10.140.7.6"}
    assert str(gateway(subnet)) == "10.140.7.1/29"
    with pytest.raises(sandboxer.SandboxError, match="no free address"):
        member_address(subnet, [*taken, "10.140.7.5", "10.140.7.6"])


def test_the_guard_chains_read_as_iptables_prints_them() -> None:
    # So that a chain already right is never flushed (which would open it for a moment).
    by_name = {chain.name: chain for chain in _CHAINS}
    inbound = by_name["SANDBOXER-INTERNAL"]
    assert _wanted("iptables", inbound)[-1] == "-A SANDBOXER-INTERNAL -j DROP"
    assert "--dport 67" in " ".join(_wanted("iptables", inbound))
    assert "--dport 547" in " ".join(_wanted("ip6tables", inbound))
    routed = by_name["SANDBOXER-INTERNAL-FWD"]
    assert routed.table == "mangle" and routed.jumps == ("-i sbi+", "-o sbi+")


def test_names_and_network_objects_both_name_networks() -> None:
    net = Network("appnet", "fake")
    spec = SandboxSpec(networks=[net, "dbnet"])
    assert spec.networks == ("appnet", "dbnet")
    assert make_plan(spec).labels[NETWORKS] == "appnet,dbnet"
    for bad, field in (
        ("appnet", "networks"),
        (["a b"], "networks[0]"),
        (["x", "x"], "networks[1]"),
    ):
        with pytest.raises(
            sandboxer.InvalidSpec, match=rf"^{field.replace('[', '.').replace(']', '.')}"
        ):
            SandboxSpec(networks=bad)


def test_the_engine_holding_the_networks_is_chosen() -> None:
    Network.create("only-other", backend="otherfake")
    assert sandboxer.select(networks=["only-other"]).backend == "otherfake"
    Network.create("only-fake", backend="fake")
    assert sandboxer.select(networks=["only-fake"]).backend == "fake"


def test_networks_on_two_engines_are_refused_naming_where_each_is() -> None:
    Network.create("on-fake", backend="fake")
    Network.create("on-other", backend="otherfake")
    with pytest.raises(
        sandboxer.UnsupportedFeature, match="on-fake on fake; on-other on otherfake"
    ):
        sandboxer.launch(networks=["on-fake", "on-other"])
    assert FakeBackend.sandboxes == {}


def test_a_missing_or_foreign_network_is_refused_before_anything_is_made() -> None:
    with pytest.raises(sandboxer.InvalidSpec, match=r"^networks\[0\].*no network 'nowhere'"):
        sandboxer.launch(backend="fake", networks=["nowhere"])
    FakeBackend().networks().create(
        "theirs", internal=False, subnet="10.150.0.0/24", labels={"made-by": "someone"}
    )
    with pytest.raises(sandboxer.InvalidSpec, match=r"^networks\[0\].*not made by sandboxer"):
        sandboxer.launch(backend="fake", networks=["theirs"])
    assert FakeBackend.sandboxes == {}
    # Nor is theirs listed, or removed, as ours.
    assert [n.name for n in Network.list("fake")] == []
    with pytest.raises(sandboxer.InvalidSpec, match="not made by sandboxer"):
        Network.get("theirs", "fake").remove()
    assert MANAGED not in FakeBackend.network_store["theirs"].labels


def test_a_member_keeps_its_network_until_it_is_gone() -> None:
    net = Network.create("busy", backend="fake", internal=True)
    assert net.internal and net.ours and ipaddress.IPv4Network(net.subnet).prefixlen == 24
    with sandboxer.launch(backend="fake", networks=[net]) as member:
        assert net.users() == [member.name]
        with pytest.raises(sandboxer.NetworkInUse, match=member.name):
            net.remove()
    net.remove()
    assert Network.list("fake") == []


def test_bad_network_arguments_name_their_field() -> None:
    for fields, field in (
        ({"name": "a b"}, "name"),
        ({"name": "ok", "internal": "yes"}, "internal"),
        ({"name": "ok", "subnet": "8.8.8.0/24"}, "subnet"),
        ({"name": "ok", "subnet": "10.0.0.0/8"}, "subnet"),
        ({"name": "ok", "subnet": "nonsense"}, "subnet"),
        ({"name": "ok", "labels": {"sandboxer.x": "1"}}, "labels"),
    ):
        name = fields.pop("name")
        with pytest.raises(sandboxer.InvalidSpec, match=rf"^{field}"):
            Network.create(name, backend="fake", **fields)  # type: ignore[arg-type]
    assert FakeBackend.network_store == {}


def test_a_network_no_engine_has_is_a_mistake_in_the_spec() -> None:
    with pytest.raises(sandboxer.InvalidSpec, match=r"^networks: no engine has .*'typo'"):
        sandboxer.launch(networks=["typo"])
    assert FakeBackend.sandboxes == {}
