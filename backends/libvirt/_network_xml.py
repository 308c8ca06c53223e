"""Named networks as libvirt networks, and a sandbox's place on them (pure: no engine calls).

Each named network is a persistent libvirt network `sandboxer-NAME` on a bridge of its
own. libvirt's dnsmasq on the bridge answers the members' names from the network's DNS
host records, which the adapter adds as sandboxes join (see `_named_networks`). An
internal network has no <forward>: libvirt rejects forwarding in or out of its bridge,
and gives its dnsmasq no upstream servers (`no-resolv`), so names it does not hold are
refused, never asked of the host's resolver. A NAT network keeps plain names (no dot)
to itself too (forwardPlainNames='no'). No network's dnsmasq reads the host's /etc/hosts
(`no-hosts`, through libvirt's dnsmasq namespace): the members learn none of the host's
names. The DNS host records still answer: libvirt hands them to dnsmasq as an addn-hosts
file, which no-hosts leaves alone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping

import attrs

from sandboxer.backend import INTERNAL_BRIDGE_PREFIX, NAMED_BRIDGE_PREFIX, NetworkInfo, gateway

from ._metadata import NAMESPACE, NAMESPACE_PREFIX, metadata_holder, parse_labels

PREFIX = "sandboxer-"
_TAG = f"{{{NAMESPACE}}}network"
_NAME_TAG = f"{{{NAMESPACE}}}name"
DNSMASQ_NAMESPACE = "http://libvirt.org/schemas/network/dnsmasq/1.0"


def libvirt_name(name: str) -> str:
    """The libvirt network behind sandboxer's network `name`."""
    return PREFIX + name


def bridge_name(name: str, internal: bool) -> str:
    """At most 15 characters (IFNAMSIZ); the internal prefix puts the host's guard
    (`guard_network_bridges`) on it. Not Incus's hash: the two engines' bridges of
    one name never meet."""
    digest = hashlib.sha256(f"libvirt:{name}".encode()).hexdigest()[:12]
    return (INTERNAL_BRIDGE_PREFIX if internal else NAMED_BRIDGE_PREFIX) + digest


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def network_xml(name: str, *, internal: bool, subnet: str, labels: Mapping[str, str]) -> str:
    """The definition of sandboxer's network `name`; sandboxer's name and the labels in
    our own metadata namespace (what tells ours apart)."""
    root = ET.Element("network")
    _sub(root, "name", libvirt_name(name))
    holder = metadata_holder(root, "network", labels)
    holder.insert(0, ET.Element(f"{NAMESPACE_PREFIX}:name"))
    holder[0].text = name
    if not internal:
        _sub(root, "forward", mode="nat")
    _sub(root, "bridge", name=bridge_name(name, internal), stp="off", delay="0")
    if internal:
        _sub(root, "dns", enable="yes")  # isolated: libvirt gives dnsmasq no upstream
    else:
        _sub(root, "dns", forwardPlainNames="no")
    network = ipaddress.IPv4Network(subnet)
    _sub(root, "ip", address=str(gateway(subnet).ip), netmask=str(network.netmask))
    root.set("xmlns:dnsmasq", DNSMASQ_NAMESPACE)
    _sub(_sub(root, "dnsmasq:options"), "dnsmasq:option", value="no-hosts")
    return ET.tostring(root, encoding="unicode")


def network_info(xml: str) -> NetworkInfo:
    """What a libvirt network's XML says, as sandboxer sees it: ours carry our metadata
    (sandboxer's name, labels); any other keeps its libvirt name (less our prefix) and
    no labels."""
    root = ET.fromstring(xml)
    own = root.find(f"metadata/{_TAG}")
    engine_name = root.findtext("name") or ""
    if own is not None and own.findtext(_NAME_TAG):
        name, labels = own.findtext(_NAME_TAG) or "", parse_labels(ET.tostring(own))
    else:
        name, labels = engine_name.removeprefix(PREFIX), {}
    return NetworkInfo("libvirt", name, root.find("forward") is None, _subnet(root), labels)


def _subnet(root: ET.Element) -> str:
    for ip in root.findall("ip"):
        if ip.get("family", "ipv4") != "ipv4" or not ip.get("address"):
            continue
        mask = ip.get("netmask") or ip.get("prefix") or "24"
        return str(ipaddress.IPv4Interface(f"{ip.get('address')}/{mask}").network)
    return ""


@attrs.frozen
class HostRecord:
    """One DNS host record of a network: an address and its names (either may be left
    out of a record that only picks one to delete, see `delete_key`)."""

    ip: str
    names: tuple[str, ...]

    def xml(self) -> str:
        host = ET.Element("host", {"ip": self.ip} if self.ip else {})
        for name in self.names:
            _sub(host, "hostname", name)
        return ET.tostring(host, encoding="unicode")


def host_records(xml: str) -> list[HostRecord]:
    """The network's DNS host records."""
    return [
        HostRecord(host.get("ip", ""), tuple(n.text or "" for n in host.findall("hostname")))
        for host in ET.fromstring(xml).findall("dns/host")
    ]


def taken_addresses(xml: str) -> list[str]:
    """Addresses members hold (DNS host records) or DHCP reserves for someone."""
    root = ET.fromstring(xml)
    found = [host.get("ip", "") for host in root.findall("dns/host")]
    found += [host.get("ip", "") for host in root.findall("ip/dhcp/host")]
    return [address for address in found if address]


def delete_key(records: Iterable[HostRecord], own: HostRecord) -> HostRecord | None:
    """What to hand libvirt to delete exactly the record `own`: libvirt deletes every
    record sharing the key's address or any of its names, and refuses when that is more
    than one. Its address alone, else one of its names alone, that no other record has;
    None if `own` is not there, or no such key exists (then it stays: nothing else goes)."""
    records = list(records)
    if own not in records:
        return None
    keys = [HostRecord(own.ip, ()), *(HostRecord("", (name,)) for name in own.names)]
    for key in keys:
        if [r for r in records if r.ip == key.ip or set(r.names) & set(key.names)] == [own]:
            return key
    return None


def member_names(sandbox: str, hostname: str) -> tuple[str, ...]:
    """A sandbox's names in its own /etc/hosts: its sandbox name, then its hostname when
    that differs. Its DNS record on a network has the sandbox name alone (unique per
    engine): a hostname may be a peer's name."""
    return (sandbox,) if hostname == sandbox else (sandbox, hostname)


def member_mac(sandbox: str, launch: str, network: str) -> str:
    """A fixed, locally administered MAC for the sandbox's NIC on `network`: the guest
    finds the NIC by it. QEMU's own prefix (52:54), clear of the user-mode NICs'."""
    digest = hashlib.sha256(f"{sandbox}\0{launch}\0{network}".encode()).digest()
    return "52:54:" + ":".join(f"{byte:02x}" for byte in (0x5C, *digest[:3]))


@attrs.frozen
class Member:
    """The sandbox's NIC on one named network."""

    network: str  # sandboxer's name
    mac: str
    address: ipaddress.IPv4Interface
    internal: bool
    # The network's other members when the sandbox joined: its /etc/hosts fallback.
    peers: tuple[HostRecord, ...] = ()

    @property
    def source(self) -> str:
        return libvirt_name(self.network)

    @property
    def gateway(self) -> str:
        return str(gateway(str(self.address.network)).ip)


def hosts_lines(members: Iterable[Member], names: tuple[str, ...]) -> str:
    """/etc/hosts lines: the sandbox itself at its first network's address, then the
    peers each network had when it joined (DNS answers for those joining later)."""
    members = list(members)
    if not members:
        return ""
    lines = [f"{members[0].address.ip} {' '.join(names)}"]
    lines += [f"{peer.ip} {' '.join(peer.names)}" for m in members for peer in m.peers]
    return "".join(line + "\n" for line in lines)
