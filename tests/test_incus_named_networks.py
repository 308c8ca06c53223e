"""The Incus adapter's named networks against a fake of Incus' network API: engine names,
config, ownership, DNS records (with concurrent writers) and the NICs a member gets."""

from __future__ import annotations

import ipaddress
import json
import types
from pathlib import Path
from typing import Any, cast

import attrs
import pytest

import sandboxer
from sandboxer import SandboxSpec
from sandboxer._backend import LaunchPlan
from sandboxer._launch import make_plan
from sandboxer.backend import NetworkInfo
from sandboxer.backends.incus import _boot, _config, _metadata
from sandboxer.backends.incus import _named_networks as named
from sandboxer.backends.incus._config import Nic
from sandboxer.backends.incus._sdk import pylxd

OURS = {"sandboxer.managed": "true", "sandboxer.launch": "l0", "team": "a"}


class _Response:
    def __init__(self, status: int, body: Any, etag: str = "") -> None:
        self.status_code, self._body, self.headers = status, body, {"ETag": etag}
        self.content = str(body).encode()

    def json(self) -> Any:
        return self._body


class _Network:
    """/1.0/networks/NAME: GET with an ETag, PATCH with If-Match, DELETE."""

    def __init__(self, api: FakeNetworks, name: str) -> None:
        self._api, self._name = api, name

    def _found(self) -> dict[str, Any]:
        if self._name not in self._api.store:
            raise pylxd.exceptions.NotFound(_Response(404, {"error": "Network not found"}))
        return self._api.store[self._name]

    def get(self) -> _Response:
        found = self._found()
        return _Response(200, {"metadata": found}, etag=str(self._api.versions[self._name]))

    def patch(self, json: dict[str, Any], headers: dict[str, str]) -> _Response:
        found = self._found()
        if self._api.before_patch:
            self._api.before_patch.pop(0)()  # someone else writes in between
        if headers["If-Match"] != str(self._api.versions[self._name]):
            raise pylxd.exceptions.LXDAPIException(_Response(412, {"error": "ETag mismatch"}))
        found["config"].update(json["config"])
        self._api.versions[self._name] += 1
        self._api.patches += 1
        return _Response(200, {"metadata": {}})

    def delete(self) -> _Response:
        self._found()
        del self._api.store[self._name]
        return _Response(200, {"metadata": {}})


class FakeNetworks:
    """/1.0/networks"""

    def __init__(self) -> None:
        self.store: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}
        self.before_patch: list[Any] = []
        self.patches = 0

    def __getitem__(self, name: str) -> _Network:
        return _Network(self, name)

    def get(self, params: dict[str, Any]) -> _Response:
        return _Response(200, {"metadata": list(self.store.values())})

    def post(self, json: dict[str, Any]) -> _Response:
        if json["name"] in self.store:
            raise pylxd.exceptions.LXDAPIException(
                _Response(400, {"error": "The network already exists"})
            )
        self.store[json["name"]] = {"name": json["name"], "config": dict(json["config"])}
        self.versions[json["name"]] = 0
        return _Response(200, {"metadata": {}})


class _Instance:
    def __init__(self, live: set[str], name: str) -> None:
        self._live, self._name = live, name

    def get(self) -> _Response:
        if self._name not in self._live:
            raise pylxd.exceptions.NotFound(_Response(404, {"error": "Instance not found"}))
        return _Response(200, {"metadata": {"name": self._name}})


@attrs.define
class FakeInstances:
    """/1.0/instances/NAME: GET only, for the names in `live`."""

    live: set[str] = attrs.field(factory=set)

    def __getitem__(self, name: str) -> _Instance:
        return _Instance(self.live, name)


@attrs.define
class _Api:
    networks: FakeNetworks
    instances: FakeInstances = attrs.field(factory=FakeInstances)


@attrs.define
class _Incus:
    api: _Api


@attrs.define
class _Store:
    root: Path


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeNetworks:
    monkeypatch.setattr(named, "default_store", lambda: _Store(tmp_path))
    monkeypatch.setattr(named, "guard_network_bridges", lambda: guarded.append(True))
    guarded.clear()
    return FakeNetworks()


guarded: list[bool] = []


def driver(api: FakeNetworks, live: set[str] | None = None) -> named.IncusNetworks:
    """The driver on `api`; `live`: the instances there are (none unless given)."""
    return named.IncusNetworks(cast(Any, _Incus(_Api(api, FakeInstances(live or set())))))


def plan(**fields: Any) -> LaunchPlan:
    return make_plan(SandboxSpec(backend="incus", **fields))


def config_of(api: FakeNetworks, name: str, internal: bool) -> dict[str, str]:
    return dict(api.store[named.engine_name(name, internal)]["config"])


def test_engine_names_fit_an_interface_and_tell_internal_networks() -> None:
    internal, other = named.engine_name("web", True), named.engine_name("web", False)
    assert len(internal) == len(other) == 15
    assert internal.startswith("sbi") and other.startswith("sbn")
    assert named.engine_name("web2", True) != internal


def test_an_internal_network_has_no_nat_no_upstream_dns_and_the_guard(
    api: FakeNetworks,
) -> None:
    info = driver(api).create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    assert info == NetworkInfo("incus", "web", True, "10.140.7.0/24", OURS)
    config = config_of(api, "web", True)
    assert config["ipv4.address"] == "10.140.7.1/24"
    assert config["ipv4.nat"] == "false" and config["ipv6.address"] == "none"
    assert config["raw.dnsmasq"] == "no-hosts\nno-resolv"
    assert config[named.NAME_KEY] == "web" and config["user.team"] == "a"
    assert guarded == [True]


def test_another_network_has_nat_and_forwards_dns(api: FakeNetworks) -> None:
    driver(api).create("out", internal=False, subnet="10.140.8.0/24", labels=OURS)
    config = config_of(api, "out", False)
    assert config["ipv4.nat"] == "true" and config["raw.dnsmasq"] == "no-hosts"
    assert guarded == [True]  # a way out, but nothing routed into it


def test_a_taken_name_is_refused_internal_or_not(api: FakeNetworks) -> None:
    networks = driver(api)
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    for internal in (True, False):
        with pytest.raises(sandboxer.SandboxExists):
            networks.create("web", internal=internal, subnet="10.140.9.0/24", labels=OURS)


def test_inspect_and_list_give_sandboxer_names_and_user_labels_only(
    api: FakeNetworks,
) -> None:
    networks = driver(api)
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    networks.create("out", internal=False, subnet="10.140.8.0/24", labels={})
    api.post({"name": "incusbr0", "config": {"ipv4.address": "10.0.0.1/24"}})
    assert networks.inspect("web") == NetworkInfo("incus", "web", True, "10.140.7.0/24", OURS)
    assert networks.inspect("nope") is None
    assert sorted((n.name, n.internal) for n in networks.list()) == [
        ("out", False),
        ("web", True),
    ]


def test_remove_deletes_only_ours(api: FakeNetworks) -> None:
    networks = driver(api)
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    networks.create("theirs", internal=True, subnet="10.140.8.0/24", labels={})
    networks.remove("theirs")
    networks.remove("web")
    networks.remove("absent")
    assert [n.name for n in networks.list()] == ["theirs"]


def test_members_get_a_nic_a_record_and_their_peers(api: FakeNetworks) -> None:
    networks = driver(api)
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    first = plan(networks=["web"])
    second = plan(networks=["web"], hostname="db")
    one, two = networks.join(first), networks.join(second)
    (nic,) = two.nics
    assert nic.device == "eth1" and nic.reserved and nic.network.startswith("sbi")
    assert nic.gateway is None  # internal: no way out
    assert ipaddress.ip_interface(nic.address) in ipaddress.ip_network("10.140.7.0/24")
    assert nic.address != one.nics[0].address
    first_ip = one.nics[0].address.split("/")[0]
    assert two.hosts == (f"{first_ip} {first.name}",)
    assert two.nameservers == ("10.140.7.1",)
    lines = config_of(api, "web", True)["raw.dnsmasq"].splitlines()
    assert lines[:2] == ["no-hosts", "no-resolv"]
    assert f"host-record={first.name},{first_ip}" in lines
    # Its sandbox name only: a host name may be anyone's.
    assert f"host-record={second.name},{nic.address.split('/')[0]}" in lines
    assert not any("db" in line.split(",") for line in lines)
    third = networks.join(plan(networks=["web"]))
    assert f"{nic.address.split('/')[0]} {second.name}" in third.hosts


def test_a_hostname_like_a_peer_s_name_never_answers_for_the_peer(api: FakeNetworks) -> None:
    networks = driver(api)
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    owner = plan(networks=["web"], name="zz-owner")
    networks.join(owner)
    owner_ip = networks.join(plan(networks=["web"])).hosts[0].split()[0]
    networks.join(plan(networks=["web"], name="aa-impostor", hostname="zz-owner"))
    lines = config_of(api, "web", True)["raw.dnsmasq"].splitlines()
    assert [line for line in lines if "zz-owner" in line] == [f"host-record=zz-owner,{owner_ip}"]
    hosts = networks.join(plan(networks=["web"])).hosts
    assert [line for line in hosts if "zz-owner" in line] == [f"{owner_ip} zz-owner"]


def test_a_live_namesake_s_record_is_never_taken(api: FakeNetworks) -> None:
    owner = plan(networks=["web"], name="taken")
    networks = driver(api, live={"taken"})
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    networks.join(owner)
    before = config_of(api, "web", True)
    namesake = plan(networks=["web"], name="taken")
    with pytest.raises(sandboxer.SandboxExists):
        networks.join(namesake)
    networks.leave("taken", namesake.labels["sandboxer.launch"])  # its launch's cleanup
    assert config_of(api, "web", True) == before


def test_a_gone_sandbox_s_record_is_replaced(api: FakeNetworks) -> None:
    networks = driver(api)  # no instance "gone" is there
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    networks.join(plan(networks=["web"], name="gone"))
    again = plan(networks=["web"], name="gone")
    networks.join(again)
    records = named.records_of(config_of(api, "web", True))
    assert records["gone"]["launch"] == again.labels["sandboxer.launch"]
    assert len(records) == 1


def test_the_default_route_goes_via_the_first_network_with_a_way_out(
    api: FakeNetworks,
) -> None:
    networks = driver(api)
    networks.create("in", internal=True, subnet="10.140.7.0/24", labels=OURS)
    networks.create("out", internal=False, subnet="10.140.8.0/24", labels=OURS)
    networks.create("out2", internal=False, subnet="10.140.9.0/24", labels=OURS)
    joined = networks.join(plan(networks=["in", "out", "out2"]))
    assert [(n.device, n.gateway) for n in joined.nics] == [
        ("eth1", None),
        ("eth2", "10.140.8.1"),
        ("eth3", None),
    ]
    # Internal networks' DNS first: they refuse names they do not hold.
    assert joined.nameservers == ("10.140.7.1", "10.140.8.1", "10.140.9.1")
    bridged = networks.join(plan(networks=["out"], network="bridge"))
    assert bridged.nics[0].gateway is None  # the default link has the route


def test_a_concurrent_writer_loses_no_record(api: FakeNetworks) -> None:
    networks = driver(api)
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    engine = named.engine_name("web", True)
    other = plan(networks=["web"])

    def other_host() -> None:
        """A process on another host (no lock in common) writes between read and write."""
        taken = {"address": "10.140.7.5", "names": ["x"]}
        driver(api)._write(engine, lambda records: records.update(x=taken))

    api.before_patch.append(other_host)
    networks.join(other)
    records = named.records_of(config_of(api, "web", True))
    assert set(records) == {other.name, "x"}
    assert records[other.name]["address"] != "10.140.7.5"


def test_leave_drops_only_the_launch_s_own_record(api: FakeNetworks) -> None:
    networks = driver(api)
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    member = plan(networks=["web"])
    networks.join(member)
    networks.leave(member.name, "another launch")
    assert member.name in named.records_of(config_of(api, "web", True))
    patches = api.patches
    networks.leave("not a member", "x")
    assert api.patches == patches  # nothing to write
    networks.leave(member.name, member.labels["sandboxer.launch"])
    assert named.records_of(config_of(api, "web", True)) == {}
    assert config_of(api, "web", True)["raw.dnsmasq"] == "no-hosts\nno-resolv"


def test_records_of_gone_sandboxes_are_leftovers(api: FakeNetworks) -> None:
    networks = driver(api)
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    live, gone = plan(networks=["web"]), plan(networks=["web"])
    networks.join(live)
    networks.join(gone)
    found = named.gone_members(config_of(api, "web", True), {live.labels["sandboxer.launch"]})
    assert [(f.name, f.labels) for f in found] == [(gone.name, dict(gone.labels))]


def test_garbled_records_and_unsafe_names_never_reach_dnsmasq_or_hosts() -> None:
    garbled = {
        "a": {"address": "10.0.0.2", "names": ["a", "x\nno-resolv", "b,c"]},
        "b": {"address": "10.0.0.3\nno-resolv", "names": ["b"]},
        "c": {"address": "10.0.0.4", "names": "c"},
        "d": "e",
    }
    records = named.records_of({named.RECORDS_KEY: json.dumps(garbled)})
    assert named.dnsmasq_lines(False, records) == "no-hosts\nhost-record=a,10.0.0.2"
    assert named.hosts_lines(records, "other") == ["10.0.0.2 a"]
    assert named.records_of({named.RECORDS_KEY: "[1"}) == {}


def _request(launch_plan: LaunchPlan, nic: Nic | None, joined: _config.Named) -> Any:
    boot = _boot.builtin(launch_plan)
    return _config.instance_request(launch_plan, "f" * 64, "default", nic, True, boot, joined)


def test_named_nics_are_numbered_for_lxc_after_the_default_link() -> None:
    joined = _config.Named(
        (
            Nic("sbiaaa", "10.140.7.9/24", None, reserved=True, device="eth1"),
            Nic("sbnbbb", "10.140.8.9/24", "10.140.8.1", reserved=True, device="eth2"),
        ),
        ("10.140.7.3 peer",),
        ("10.140.7.1", "10.140.8.1"),
    )
    launch_plan = plan(networks=["a", "b"], network="isolated")
    body = _request(launch_plan, Nic("sbx0", "10.214.9.9/16"), joined)
    raw = body["config"]["raw.lxc"].splitlines()
    assert "lxc.net.0.ipv4.address = 10.214.9.9/16 10.214.255.255" in raw
    assert "lxc.net.1.ipv4.address = 10.140.7.9/24 10.140.7.255" in raw
    assert "lxc.net.2.ipv4.gateway = 10.140.8.1" in raw
    assert body["devices"]["eth2"] == {
        "type": "nic",
        "network": "sbnbbb",
        "name": "eth2",
        "ipv4.address": "10.140.8.9",
        "security.ipv4_filtering": "true",
        "security.mac_filtering": "true",
    }
    assert body["config"][_config.HOSTS_KEY] == "10.140.7.3 peer\n"
    assert body["config"][_config.RESOLV_KEY] == "nameserver 10.140.7.1\nnameserver 10.140.8.1\n"


def test_without_a_default_link_the_first_named_nic_is_lxc_s_first() -> None:
    joined = _config.Named((Nic("sbiaaa", "10.140.7.9/24", None, True, "eth1"),))
    body = _request(plan(networks=["a"]), None, joined)
    assert "lxc.net.0.ipv4.address = 10.140.7.9/24 10.140.7.255" in body["config"]["raw.lxc"]
    assert body["config"][_config.ADDRESS_KEY] == "10.140.7.9"
    assert not any("gateway" in line for line in body["config"]["raw.lxc"].splitlines())


def test_the_templates_write_the_peers_and_the_resolver() -> None:
    assert _config.HOSTS_KEY in _metadata.TEMPLATES["/etc/hosts"]
    assert _config.RESOLV_KEY in _metadata.TEMPLATES["/etc/resolv.conf"]


def test_the_network_control_names_the_named_networks() -> None:
    boot = _boot.Init.BUILTIN
    alone = _config.enforcement_overrides(plan(networks=["a", "b"]), boot)["network"]
    assert alone.enforced and "named networks a, b" in alone.mechanism
    both = _config.enforcement_overrides(plan(networks=["a"], network="bridge"), boot)
    assert "shared NAT bridge" in both["network"].mechanism
    assert "named networks a" in both["network"].mechanism


def test_a_launch_of_a_taken_name_is_refused_before_it_joins(api: FakeNetworks) -> None:
    """The create path asks first: a namesake never gets to write a member's record."""
    from sandboxer.backends.incus._backend import IncusBackend

    networks = driver(api, live={"taken"})
    networks.create("web", internal=True, subnet="10.140.7.0/24", labels=OURS)
    # Image and pool are resolved first (a missing image is told before a taken name).
    source = types.SimpleNamespace(boot=lambda plan: None)
    images = types.SimpleNamespace(source=lambda plan: source)
    backend = cast(
        Any, types.SimpleNamespace(_named=networks, _images=images, _root_pool=lambda: "p")
    )
    with pytest.raises(sandboxer.SandboxExists):
        IncusBackend.create(backend, plan(networks=["web"], name="taken"))
    assert api.patches == 0
