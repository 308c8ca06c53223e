"""Named networks on libvirt: the NetworkDriver, and sandboxes joining and leaving them.

A sandbox joins a network with a static address (its guest has no DHCP client) and its
sandbox name (never its hostname: that may be a peer's name) in the network's DNS host
records, which libvirt's dnsmasq answers from then on:
members that join later are found by name too. Picking the address and adding the
record happen under one lock file for every process using this state directory, so two
launches never take the same address. The sandbox's directory keeps what it added
(MEMBERS_FILE), and `leave` takes exactly that record away again, whatever else is there.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from sandboxer.backend import (
    LAUNCH,
    LaunchPlan,
    NetworkDriver,
    NetworkInfo,
    SandboxExists,
    SandboxNotFound,
    guard_network_bridges,
    is_ours,
    logger,
    member_address,
)

from ._errors import libvirt_errors
from ._network_xml import (
    HostRecord,
    Member,
    delete_key,
    host_records,
    libvirt_name,
    member_mac,
    network_info,
    network_xml,
    taken_addresses,
)
from ._sdk import libvirt

MEMBERS_FILE = "networks.json"
LOCK_FILE = "networks.lock"


class LibvirtNetworks(NetworkDriver):
    """`connect` returns the backend's current connection; `root`: the state directory."""

    def __init__(self, connect: Callable[[], libvirt.virConnect], root: Path) -> None:
        self._connect = connect
        self._root = root

    # the driver -----------------------------------------------------------------------
    def create(
        self, name: str, *, internal: bool, subnet: str, labels: Mapping[str, str]
    ) -> NetworkInfo:
        if self._lookup(name) is not None:
            raise SandboxExists(f"a libvirt network {libvirt_name(name)!r} exists")
        guard_network_bridges()  # before any member can send the host anything
        xml = network_xml(name, internal=internal, subnet=subnet, labels=labels)
        with libvirt_errors():
            # Another launch defining the name meanwhile: "already exists", SandboxExists.
            network = self._connect().networkDefineXML(xml)
            try:
                network.create()
                network.setAutostart(1)  # back when libvirtd starts again
            except BaseException:
                _discard(network)
                raise
        return network_info(xml)

    def inspect(self, name: str) -> NetworkInfo | None:
        network = self._lookup(name)
        xml = None if network is None else _description(network)
        return None if xml is None else network_info(xml)

    def list(self) -> builtins.list[NetworkInfo]:
        with libvirt_errors():
            networks = self._connect().listAllNetworks(0)
        found = (_description(network) for network in networks)
        return [network_info(xml) for xml in found if xml is not None]

    def remove(self, name: str) -> None:
        network = self._lookup(name)
        xml = None if network is None else _description(network)
        if network is None or xml is None:
            return
        info = network_info(xml)
        if info.name != name or not is_ours(info.labels):
            return  # never anyone else's
        _discard(network)

    # members --------------------------------------------------------------------------
    def join(self, plan: LaunchPlan, run: Path) -> tuple[Member, ...]:
        """Give the sandbox an address and its names on each of its named networks;
        recorded in `run` before each name is added, so `leave` finds whatever was."""
        members: list[Member] = []
        if not plan.networks:
            return ()
        names = (plan.name,)
        with self._locked():
            for name in plan.networks:
                network = self._running(libvirt_name(name))
                with libvirt_errors():
                    xml = network.XMLDesc(0)
                info = network_info(xml)
                records = host_records(xml)
                # A record of this name is a sandbox's that is gone without leaving: this
                # name's domain and directory are this launch's now.
                stale = [record for record in records if record.names[:1] == names]
                for record in stale:
                    _delete(network, record)
                address = member_address(info.subnet, taken_addresses(xml))
                peers = tuple(record for record in records if record not in stale)
                mac = member_mac(plan.name, plan.labels.get(LAUNCH, ""), name)
                members.append(Member(name, mac, address, info.internal, peers))
                _save(run, members, names)
                own = HostRecord(str(address.ip), names)
                _update(network, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, own)
        return tuple(members)

    def ready(self, domain_xml: str) -> None:
        """Before a stopped sandbox boots again from `domain_xml`: its networks running."""
        for source in ET.fromstring(domain_xml).findall("devices/interface/source[@network]"):
            self._running(source.get("network", ""))

    def leave(self, run: Path) -> None:
        """Take the names `join` recorded in `run` off their networks (those still there)."""
        joined = _load(run)
        if not joined:
            return
        with self._locked():
            for name, own in joined:
                network = self._lookup(name)
                if network is not None:
                    _delete(network, own)

    # helpers --------------------------------------------------------------------------
    def _lookup(self, name: str) -> libvirt.virNetwork | None:
        """Sandboxer's network `name`, ours or not; None if there is none."""
        with libvirt_errors():
            try:
                return self._connect().networkLookupByName(libvirt_name(name))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
        return None

    def _running(self, engine_name: str) -> libvirt.virNetwork:
        """The libvirt network `engine_name`, started if it is not running (autostart
        covers libvirtd's restarts, not someone's net-destroy), an internal one guarded
        (again: a host reboot loses the guard, not libvirt's autostarted network)."""
        with libvirt_errors():
            try:
                network = self._connect().networkLookupByName(engine_name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
                raise SandboxNotFound(f"libvirt network {engine_name!r} is gone") from None
            guard_network_bridges()
            if not network.isActive():
                network.create()
        return network

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._root.mkdir(parents=True, exist_ok=True)
        with open(self._root / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # closing the file releases the lock


def _description(network: libvirt.virNetwork) -> str | None:
    """The network's XML; None if it vanished meanwhile."""
    with libvirt_errors():
        try:
            return str(network.XMLDesc(0))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                raise
    return None


def _discard(network: libvirt.virNetwork) -> None:
    """Stop and undefine `network`, whichever of the two is still to do."""
    with libvirt_errors():
        for step in (network.destroy, network.undefine):
            try:
                step()
            except libvirt.libvirtError as exc:
                # Not running (destroy), or gone already.
                if exc.get_error_code() not in (
                    libvirt.VIR_ERR_OPERATION_INVALID,
                    libvirt.VIR_ERR_NO_NETWORK,
                ):
                    raise


def _update(network: libvirt.virNetwork, command: int, record: HostRecord) -> None:
    """Add or delete a DNS host record, in the definition and, if running, in dnsmasq."""
    with libvirt_errors():
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        if network.isActive():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        network.update(command, libvirt.VIR_NETWORK_SECTION_DNS_HOST, -1, record.xml(), flags)


def _delete(network: libvirt.virNetwork, record: HostRecord) -> None:
    """Delete exactly `record` (an equal one) from `network`, if it is there."""
    xml = _description(network)
    key = None if xml is None else delete_key(host_records(xml), record)
    if key is None:
        logger.debug("no record %s to delete alone in %s", record, network.name())
        return
    _update(network, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, key)


def _save(run: Path, members: builtins.list[Member], names: tuple[str, ...]) -> None:
    document = [
        {"network": member.network, "ip": str(member.address.ip), "names": list(names)}
        for member in members
    ]
    path = run / MEMBERS_FILE
    path.write_text(json.dumps(document) + "\n")
    path.chmod(0o600)


def _load(run: Path) -> builtins.list[tuple[str, HostRecord]]:
    # Written by _save into a directory only root can write.
    try:
        document = json.loads((run / MEMBERS_FILE).read_text())
    except FileNotFoundError:
        return []
    return [
        (entry["network"], HostRecord(entry["ip"], tuple(entry["names"]))) for entry in document
    ]
