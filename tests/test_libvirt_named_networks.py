"""libvirt named networks: the network XML, the driver and members' join/leave against a
fake connection, and how a sandbox's networks reach its domain and guest (no engine)."""

from __future__ import annotations

import fcntl
import ipaddress
import json
import shlex
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from sandboxer import InvalidSpec, SandboxExists, SandboxNotFound, SandboxSpec
from sandboxer._backend import LaunchPlan
from sandboxer._launch import make_plan
from sandboxer.backend import INTERNAL_BRIDGE_PREFIX, LAUNCH, MANAGED
from sandboxer.backends.libvirt import (
    _cloud_guest,
    _domain,
    _guest_config,
    _named_networks,
    _network_xml,
)
from sandboxer.backends.libvirt._network_xml import HostRecord, Member
from sandboxer.backends.libvirt._sdk import libvirt

OURS = {MANAGED: "true", LAUNCH: "net-launch"}
SUBNET = "10.140.7.0/24"


def plan_for(**fields: object) -> LaunchPlan:
    return make_plan(SandboxSpec(backend="libvirt", **fields))  # type: ignore[arg-type]


def member(
    network: str = "web", address: str = "10.140.7.9/24", internal: bool = False, **fields: Any
) -> Member:
    mac = _network_xml.member_mac("box", "launch", network)
    return Member(network, mac, ipaddress.IPv4Interface(address), internal, **fields)


# the network XML ---------------------------------------------------------------------
@pytest.mark.parametrize("internal", [True, False])
def test_network_xml_carries_name_labels_bridge_and_gateway(internal: bool) -> None:
    xml = _network_xml.network_xml(
        "web", internal=internal, subnet=SUBNET, labels={**OURS, "team": "a&b"}
    )
    root = ET.fromstring(xml)
    assert root.findtext("name") == "sandboxer-web"
    bridge = root.find("bridge").get("name")  # type: ignore[union-attr]
    assert bridge is not None and len(bridge) <= 15
    assert bridge.startswith(INTERNAL_BRIDGE_PREFIX if internal else "sbn")
    assert root.find("ip").attrib == {"address": "10.140.7.1", "netmask": "255.255.255.0"}  # type: ignore[union-attr]
    assert (root.find("forward") is None) is internal
    if not internal:
        assert root.find("forward").get("mode") == "nat"  # type: ignore[union-attr]
        assert root.find("dns").get("forwardPlainNames") == "no"  # type: ignore[union-attr]
    assert root.find("dns/forwarder") is None and root.find("ip/dhcp") is None
    # dnsmasq never serves the host's /etc/hosts, internal network or not.
    ns = {"dnsmasq": _network_xml.DNSMASQ_NAMESPACE}
    options = root.findall("dnsmasq:options/dnsmasq:option", ns)
    assert [option.get("value") for option in options] == ["no-hosts"]
    info = _network_xml.network_info(xml)
    assert (info.name, info.internal, info.subnet) == ("web", internal, SUBNET)
    assert info.labels == {**OURS, "team": "a&b"} and info.backend == "libvirt"


def test_bridges_differ_by_name_and_kind_and_from_incus_hash() -> None:
    names = {_network_xml.bridge_name(n, i) for n in ("a", "b") for i in (True, False)}
    assert len(names) == 4
    # Not the hash of the bare name (Incus's), so the two engines' bridges never meet.
    import hashlib

    assert hashlib.sha256(b"a").hexdigest()[:12] not in _network_xml.bridge_name("a", True)


def test_a_network_without_our_metadata_is_not_ours() -> None:
    xml = (
        "<network><name>sandboxer-web</name><bridge name='virbr9'/>"
        "<forward mode='nat'/><ip address='192.168.9.1' prefix='24'/></network>"
    )
    info = _network_xml.network_info(xml)
    assert (info.name, info.labels, info.internal, info.subnet) == (
        "web",
        {},
        False,
        "192.168.9.0/24",
    )
    assert _network_xml.network_info("<network><name>default</name></network>").name == "default"


def test_host_records_taken_addresses_and_record_xml_round_trip() -> None:
    record = HostRecord("10.140.7.9", ("box", "host"))
    xml = (
        "<network><dns>" + record.xml() + "</dns><ip address='10.140.7.1' prefix='24'>"
        "<dhcp><host mac='52:54:00:00:00:01' ip='10.140.7.20'/></dhcp></ip></network>"
    )
    assert _network_xml.host_records(xml) == [record]
    assert _network_xml.taken_addresses(xml) == ["10.140.7.9", "10.140.7.20"]


def test_delete_key_picks_exactly_the_record_whatever_else_is_there() -> None:
    own = HostRecord("10.140.7.9", ("box",))
    leftover = HostRecord("10.140.7.3", ("other", "box"))  # an old hostname like ours
    assert _network_xml.delete_key([leftover, own], own) == HostRecord("10.140.7.9", ())
    assert HostRecord("10.140.7.9", ()).xml() == '<host ip="10.140.7.9" />'
    same_ip = HostRecord("10.140.7.9", ("manual",))
    assert _network_xml.delete_key([own, same_ip], own) == HostRecord("", ("box",))
    assert HostRecord("", ("box",)).xml() == "<host><hostname>box</hostname></host>"
    assert _network_xml.delete_key([own, same_ip, leftover], own) is None  # none is exact
    assert _network_xml.delete_key([own, own], own) is None
    assert _network_xml.delete_key([leftover], own) is None  # not there


def test_member_mac_is_fixed_per_sandbox_and_network_and_locally_administered() -> None:
    mac = _network_xml.member_mac("box", "launch", "web")
    assert mac == _network_xml.member_mac("box", "launch", "web")
    assert mac != _network_xml.member_mac("box", "launch", "db")
    assert mac != _network_xml.member_mac("box", "other-launch", "web")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert len(mac.split(":")) == 6
    assert mac not in (_domain.INBOUND_MAC, _domain.OUTBOUND_MAC)


def test_member_names_put_the_sandbox_name_first() -> None:
    assert _network_xml.member_names("box", "box") == ("box",)
    assert _network_xml.member_names("box", "host") == ("box", "host")


# the domain and the guest --------------------------------------------------------------
def test_each_named_network_is_a_virtio_interface_on_its_libvirt_network() -> None:
    members = [member("web"), member("db", "10.140.8.5/24", internal=True)]
    root = ET.fromstring(
        _domain.domain_xml(
            plan_for(network="none"),
            accel="qemu",
            console_log="/run/x/console.log",
            boot=_domain.Boot("/k", "/i"),
            members=members,
        )
    )
    interfaces = root.findall("devices/interface")
    assert [i.get("type") for i in interfaces] == ["network", "network"]
    for interface, joined in zip(interfaces, members, strict=True):
        assert interface.find("source").get("network") == "sandboxer-" + joined.network  # type: ignore[union-attr]
        assert interface.find("mac").get("address") == joined.mac  # type: ignore[union-attr]
        assert interface.find("model").get("type") == "virtio"  # type: ignore[union-attr]
        assert interface.find("rom").get("enabled") == "no"  # type: ignore[union-attr]
    # network "none": the named NICs only, no user-mode network.
    assert root.find(f"{{{_domain.QEMU_NAMESPACE}}}commandline") is None


def conf(plan: LaunchPlan, members: list[Member]) -> dict[str, str]:
    text = _guest_config.sandbox_conf(plan, None, members)
    pairs = (line.split("=", 1) for line in text.splitlines())
    return {key: " ".join(shlex.split(value)) for key, value in pairs}


def test_guest_config_routes_and_resolves_through_the_named_networks() -> None:
    internal = member("db", "10.140.8.5/24", internal=True)
    nat = member("web", "10.140.7.9/24", internal=False)
    # Hardened default ("none") on an internal network: no route, its dnsmasq resolves.
    values = conf(plan_for(network="none"), [internal])
    assert values["SBX_NICS"] == "1" and values["SBX_ROUTE"] == ""
    assert values["SBX_NAMESERVERS"] == "10.140.8.1"
    # The first network with a way out carries the default route.
    values = conf(plan_for(network="isolated"), [internal, nat])
    assert values["SBX_ROUTE"] == "10.140.7.1"
    assert values["SBX_NAMESERVERS"] == "10.140.8.1 10.140.7.1"
    # "bridge": QEMU's outbound network is the way out, its DNS asked last.
    values = conf(plan_for(network="bridge"), [internal, nat])
    assert values["SBX_ROUTE"] == ""
    assert values["SBX_NAMESERVERS"] == "10.140.8.1 10.140.7.1 10.0.3.3"
    # No NIC at all: no network module, no resolver.
    values = conf(plan_for(network="none"), [])
    assert values["SBX_NICS"] == "0" and values["SBX_NAMESERVERS"] == ""
    assert conf(plan_for(network="bridge"), [])["SBX_NAMESERVERS"] == "10.0.3.3"


def test_guest_files_name_each_nic_by_mac_and_list_itself_and_its_peers() -> None:
    peers = (HostRecord("10.140.7.3", ("old", "old-host")),)
    first = member("web", "10.140.7.9/24", peers=peers)
    second = member("db", "10.140.8.5/24", internal=True)
    plan = plan_for(network="none", name="box", hostname="host")
    files = _guest_config.guest_files(plan, b"", None, [first, second])
    assert files["etc/sandboxer/networks"].decode() == (
        f"{first.mac} 10.140.7.9/24\n{second.mac} 10.140.8.5/24\n"
    )
    assert files["etc/sandboxer/hosts"].decode() == (
        "10.140.7.9 box host\n10.140.7.3 old old-host\n"
    )
    bare = _guest_config.guest_files(plan_for(), b"")
    assert bare["etc/sandboxer/networks"] == b"" and bare["etc/sandboxer/hosts"] == b""


def test_the_init_reads_the_named_networks_and_writes_resolver_and_hosts() -> None:
    from sandboxer.backends.libvirt._guest_scripts import init_script

    script = init_script()
    assert "done < /etc/sandboxer/networks" in script
    assert 'ip route add default via "$SBX_ROUTE"' in script
    assert "cat /etc/sandboxer/hosts >> /etc/hosts" in script
    assert "hosts: files dns" in script  # /etc/hosts before DNS


def test_cloud_network_config_gives_named_nics_their_static_addresses() -> None:
    internal = member("db", "10.140.8.5/24", internal=True)
    nat = member("web", "10.140.7.9/24")
    config = json.loads(_cloud_guest.network_config(plan_for(network="none"), [internal, nat]))
    db, web = config["ethernets"]["sbxnet0"], config["ethernets"]["sbxnet1"]
    assert db["match"] == {"macaddress": internal.mac} and db["addresses"] == ["10.140.8.5/24"]
    assert "gateway4" not in db and web["gateway4"] == "10.140.7.1"
    assert web["nameservers"] == {"addresses": ["10.140.8.1", "10.140.7.1"]}
    only_internal = json.loads(_cloud_guest.network_config(plan_for(network="none"), [internal]))
    assert only_internal["ethernets"]["sbxnet0"]["nameservers"] == {"addresses": ["10.140.8.1"]}


# the driver against a fake connection --------------------------------------------------
def _error(code: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, 0, message, 2, "", None, None, 0, 0)
    return exc


class FakeNetwork:
    def __init__(self, conn: FakeConn, xml: str) -> None:
        self.conn, self.root = conn, ET.fromstring(xml)
        self.active = self.autostart = False
        self.updates: list[tuple[int, str]] = []

    def name(self) -> str:
        return self.root.findtext("name") or ""

    def XMLDesc(self, _flags: int = 0) -> str:
        if self.name() not in self.conn.networks:
            raise _error(libvirt.VIR_ERR_NO_NETWORK, "gone")
        return ET.tostring(self.root, encoding="unicode")

    def isActive(self) -> bool:
        return self.active

    def create(self) -> None:
        self.active = True

    def setAutostart(self, value: int) -> None:
        self.autostart = bool(value)

    def destroy(self) -> None:
        if not self.active:
            raise _error(libvirt.VIR_ERR_OPERATION_INVALID, "not active")
        self.active = False

    def undefine(self) -> None:
        self.conn.networks.pop(self.name())

    def update(self, command: int, section: int, _index: int, xml: str, flags: int) -> None:
        assert section == libvirt.VIR_NETWORK_SECTION_DNS_HOST
        assert flags & libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        assert bool(flags & libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE) is self.active
        self.updates.append((command, xml))
        dns = self.root.find("dns")
        if dns is None:
            dns = ET.SubElement(self.root, "dns")
        host = ET.fromstring(xml)
        if command == libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST:
            dns.append(host)
            return
        # As libvirt: a record matches by its address or any one of its names.
        names = {n.text for n in host.findall("hostname")}
        matches = [
            h
            for h in dns.findall("host")
            if h.get("ip") == host.get("ip") or names & {n.text for n in h.findall("hostname")}
        ]
        if len(matches) != 1:
            raise _error(libvirt.VIR_ERR_OPERATION_INVALID, f"{len(matches)} matching records")
        dns.remove(matches[0])


class FakeConn:
    def __init__(self) -> None:
        self.networks: dict[str, FakeNetwork] = {}

    def add(self, xml: str, active: bool = True) -> FakeNetwork:
        network = FakeNetwork(self, xml)
        network.active = active
        self.networks[network.name()] = network
        return network

    def networkLookupByName(self, name: str) -> FakeNetwork:
        if name not in self.networks:
            raise _error(libvirt.VIR_ERR_NO_NETWORK, f"no network {name}")
        return self.networks[name]

    def networkDefineXML(self, xml: str) -> FakeNetwork:
        name = ET.fromstring(xml).findtext("name") or ""
        if name in self.networks:
            raise _error(libvirt.VIR_ERR_OPERATION_FAILED, f"network '{name}' already exists")
        return self.add(xml, active=False)

    def listAllNetworks(self, _flags: int = 0) -> list[FakeNetwork]:
        return list(self.networks.values())


@pytest.fixture
def guards(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    calls: list[bool] = []
    monkeypatch.setattr(_named_networks, "guard_network_bridges", lambda: calls.append(True))
    return calls


def driver(tmp_path: Path) -> tuple[_named_networks.LibvirtNetworks, FakeConn]:
    conn = FakeConn()
    return _named_networks.LibvirtNetworks(lambda: conn, tmp_path / "state"), conn  # type: ignore[arg-type,return-value]


def ours(name: str, internal: bool = True, subnet: str = SUBNET) -> str:
    return _network_xml.network_xml(name, internal=internal, subnet=subnet, labels=OURS)


def test_create_defines_starts_and_autostarts_guarding_the_bridge(
    tmp_path: Path, guards: list[bool]
) -> None:
    networks, conn = driver(tmp_path)
    info = networks.create("web", internal=False, subnet=SUBNET, labels=OURS)
    made = conn.networks["sandboxer-web"]
    assert made.active and made.autostart and guards == [True]
    assert (info.name, info.internal, info.subnet, info.labels) == ("web", False, SUBNET, OURS)
    networks.create("db", internal=True, subnet="10.140.8.0/24", labels=OURS)
    assert guards == [True, True]
    assert sorted(n.name for n in networks.list()) == ["db", "web"]
    assert networks.inspect("web") == info and networks.inspect("nope") is None


def test_create_refuses_a_taken_name_ours_or_not(tmp_path: Path, guards: list[bool]) -> None:
    networks, conn = driver(tmp_path)
    conn.add("<network><name>sandboxer-web</name></network>")
    with pytest.raises(SandboxExists):
        networks.create("web", internal=True, subnet=SUBNET, labels=OURS)
    assert guards == []


def test_create_maps_a_lost_race_to_exists(tmp_path: Path, guards: list[bool]) -> None:
    networks, conn = driver(tmp_path)
    lookups = iter([None])
    original = networks._lookup
    networks._lookup = lambda name: next(lookups, None) or original(name)  # type: ignore[method-assign]
    conn.add(ours("web"))  # defined by another process after our look-up
    with pytest.raises(SandboxExists):
        networks.create("web", internal=True, subnet=SUBNET, labels=OURS)


def test_remove_takes_ours_only_and_ignores_the_absent(tmp_path: Path) -> None:
    networks, conn = driver(tmp_path)
    conn.add(ours("web"))
    conn.add("<network><name>sandboxer-theirs</name></network>")
    conn.add("<network><name>inactive-ours</name></network>", active=False)
    networks.remove("theirs")
    networks.remove("absent")
    networks.remove("web")
    assert sorted(conn.networks) == ["inactive-ours", "sandboxer-theirs"]
    conn.add(ours("stopped"), active=False)
    networks.remove("stopped")  # destroy says "not active": undefined all the same
    assert "sandboxer-stopped" not in conn.networks


def test_join_gives_distinct_addresses_and_names_and_leave_takes_them_back(
    tmp_path: Path, guards: list[bool]
) -> None:
    networks, conn = driver(tmp_path)
    web = conn.add(ours("web", internal=False))
    db = conn.add(ours("db", subnet="10.140.8.0/24"), active=False)
    first_run, second_run = tmp_path / "one", tmp_path / "two"
    first_run.mkdir()
    second_run.mkdir()
    first = networks.join(plan_for(name="one", networks=("web",), network="none"), first_run)
    second = networks.join(
        plan_for(name="two", hostname="host", networks=("web", "db"), network="none"),
        second_run,
    )
    assert db.active  # started to be joined
    assert guards and all(guards)  # each network's bridge, before it is joined
    assert first[0].address != second[0].address
    assert str(second[0].address.network) == SUBNET and second[1].network == "db"
    assert second[0].address.ip != ipaddress.IPv4Address("10.140.7.1")  # never the gateway
    assert second[0].peers == (HostRecord(str(first[0].address.ip), ("one",)),)
    assert second[1].peers == () and not second[0].internal and second[1].internal
    assert _network_xml.host_records(web.XMLDesc()) == [
        HostRecord(str(first[0].address.ip), ("one",)),
        HostRecord(str(second[0].address.ip), ("two",)),  # never its host name
    ]
    networks.leave(second_run)
    assert _network_xml.host_records(web.XMLDesc()) == [
        HostRecord(str(first[0].address.ip), ("one",))
    ]
    assert _network_xml.host_records(db.XMLDesc()) == []
    networks.leave(second_run)  # nothing left to take: no error
    networks.leave(tmp_path)  # never joined anything


def test_join_replaces_a_gone_sandboxes_record_of_the_same_name(
    tmp_path: Path, guards: list[bool]
) -> None:
    networks, conn = driver(tmp_path)
    web = conn.add(ours("web"))
    stale = HostRecord("10.140.7.50", ("one",))
    peer = HostRecord("10.140.7.51", ("other",))
    for record in (stale, peer):
        web.update(
            libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
            libvirt.VIR_NETWORK_SECTION_DNS_HOST,
            -1,
            record.xml(),
            3,
        )
    run = tmp_path / "run"
    run.mkdir()
    (joined,) = networks.join(plan_for(name="one", networks=("web",)), run)
    records = _network_xml.host_records(web.XMLDesc())
    assert stale not in records and peer in records
    assert joined.peers == (peer,)
    assert str(joined.address.ip) not in ("10.140.7.50", "10.140.7.51")


def test_a_hostname_like_a_peer_s_name_is_not_published_and_both_leave(
    tmp_path: Path, guards: list[bool]
) -> None:
    networks, conn = driver(tmp_path)
    web = conn.add(ours("web"))
    runs = [tmp_path / "one", tmp_path / "two"]
    for run in runs:
        run.mkdir()
    (owner,) = networks.join(plan_for(name="one", networks=("web",)), runs[0])
    (impostor,) = networks.join(plan_for(name="two", hostname="one", networks=("web",)), runs[1])
    assert _network_xml.host_records(web.XMLDesc()) == [
        HostRecord(str(owner.address.ip), ("one",)),
        HostRecord(str(impostor.address.ip), ("two",)),
    ]
    for run in runs:
        networks.leave(run)
    assert _network_xml.host_records(web.XMLDesc()) == []


def test_leave_takes_exactly_its_record_among_leftovers(tmp_path: Path, guards: list[bool]) -> None:
    """A record made before host names stayed out of DNS ("two" with host name "one"),
    and a members file of that time: each leave deletes its own record only."""
    networks, conn = driver(tmp_path)
    web = conn.add(ours("web"))
    old = HostRecord("10.140.7.60", ("two", "one"))
    web.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, 10, -1, old.xml(), 3)
    old_run, run = tmp_path / "old", tmp_path / "run"
    old_run.mkdir()
    run.mkdir()
    entry = {"network": "web", "ip": old.ip, "names": list(old.names)}
    (old_run / _named_networks.MEMBERS_FILE).write_text(json.dumps([entry]))
    (joined,) = networks.join(plan_for(name="one", networks=("web",)), run)
    own = HostRecord(str(joined.address.ip), ("one",))
    networks.leave(run)
    assert _network_xml.host_records(web.XMLDesc()) == [old]
    (joined,) = networks.join(plan_for(name="one", networks=("web",)), run)
    networks.leave(old_run)
    assert _network_xml.host_records(web.XMLDesc()) == [
        HostRecord(str(joined.address.ip), own.names)
    ]


def test_leave_keeps_a_record_someone_else_holds_now(tmp_path: Path, guards: list[bool]) -> None:
    networks, conn = driver(tmp_path)
    web = conn.add(ours("web"))
    run = tmp_path / "run"
    run.mkdir()
    (joined,) = networks.join(plan_for(name="one", networks=("web",)), run)
    own = HostRecord(str(joined.address.ip), ("one",))
    web.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, 10, -1, own.xml(), 3)
    newer = HostRecord(str(joined.address.ip), ("newer",))
    web.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, 10, -1, newer.xml(), 3)
    networks.leave(run)
    assert _network_xml.host_records(web.XMLDesc()) == [newer]


def test_join_of_a_network_gone_since_the_check_fails(tmp_path: Path) -> None:
    networks, _ = driver(tmp_path)
    with pytest.raises(SandboxNotFound, match="sandboxer-web"):
        networks.join(plan_for(networks=("web",)), tmp_path)


def test_a_bad_network_name_is_refused_before_any_engine_call() -> None:
    with pytest.raises(InvalidSpec, match="networks"):
        plan_for(networks=("bad name",))


def test_a_restart_finds_its_networks_running_and_internal_ones_guarded(
    tmp_path: Path, guards: list[bool]
) -> None:
    networks, conn = driver(tmp_path)
    db = conn.add(ours("db"), active=False)
    web = conn.add(ours("web", internal=False, subnet="10.140.8.0/24"))
    joined = [member("db", internal=True), member("web", "10.140.8.5/24")]
    xml = _domain.domain_xml(
        plan_for(network="isolated"),
        accel="qemu",
        console_log="/x",
        boot=_domain.Boot("/k", "/i"),
        members=joined,
    )
    networks.ready(xml)
    assert db.active and web.active and guards and all(guards)
    conn.networks.pop("sandboxer-web")
    with pytest.raises(SandboxNotFound, match="sandboxer-web"):
        networks.ready(xml)


def test_join_waits_while_another_process_holds_the_networks_lock(
    tmp_path: Path, guards: list[bool]
) -> None:
    networks, conn = driver(tmp_path)
    web = conn.add(ours("web"))
    (tmp_path / "state").mkdir()
    run = tmp_path / "run"
    run.mkdir()
    with open(tmp_path / "state" / _named_networks.LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        plan = plan_for(name="one", networks=("web",))
        joining = threading.Thread(target=networks.join, args=(plan, run))
        joining.start()
        joining.join(0.3)
        assert joining.is_alive() and _network_xml.host_records(web.XMLDesc()) == []
    joining.join(10)
    assert not joining.is_alive() and len(_network_xml.host_records(web.XMLDesc())) == 1
