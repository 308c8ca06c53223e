"""A launch plan turned into libvirt domain XML (pure: no engine calls, no I/O).

Networking is QEMU's user-mode stack (slirp), given through <qemu:commandline> because
libvirt 9.0's own <interface type='user'> can neither forward ports (without passt) nor
isolate the guest. Published ports come in through a network with `restrict=on`, from
which the guest reaches nothing ("isolated" is just that); "bridge" adds a second,
unrestricted network for outbound traffic (see `_guest_config.nics` for why two).
Named networks are libvirt's own: one <interface type='network'> each (`_network_xml`).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import attrs

from sandboxer.backend import LaunchPlan, PortMapping

from ._guest_config import Share, nics
from ._guest_scripts import (
    AGENT_CHANNEL,
    GUEST_ADDRESS,
    INBOUND_MAC,
    INBOUND_NET,
    OUTBOUND_MAC,
    OUTBOUND_NET,
    SERVICE_CHANNEL,
)
from ._metadata import metadata_holder
from ._network_xml import Member

QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
MIB = 1024 * 1024
# Guest RAM beyond the sandbox's memory limit: the kernel and the in-RAM root file system,
# or, booting a user's disk image, systemd and cloud-init (Python). Untouched RAM costs the
# host nothing.
GUEST_OVERHEAD = 128 * MIB
# The command service's ports (see _service): one per host process using a sandbox at once.
SERVICE_PORTS = 4
DEFAULT_MEMORY = 512 * MIB
DISK_GUEST_OVERHEAD = 384 * MIB
DISK_DEFAULT_MEMORY = 1024 * MIB
# Fast boot under TCG: skip self-tests and probing of hardware the VM does not have.
KERNEL_ARGS = (
    "console=ttyS0",
    "panic=-1",
    "quiet",
    "acpi=off",
    "cryptomgr.notests",
    "i8042.noaux",
    "i8042.nokbd",
    "i8042.nopnp",
    "tsc=reliable",
    "no_timer_check",
    "random.trust_cpu=on",
)


@attrs.frozen
class Boot:
    """Direct kernel boot: no disk, no boot loader."""

    kernel: str
    initrd: str
    loader: str | None = None  # a firmware ROM (qboot) instead of SeaBIOS
    extra_args: tuple[str, ...] = ()
    # The image's own systemd and services run beside the commands (sandboxer/systemd):
    # the room a disk image's systemd gets.
    full_system: bool = False

    @property
    def cmdline(self) -> str:
        return " ".join((*KERNEL_ARGS, *self.extra_args))


@attrs.frozen
class Disk:
    path: str
    format: str = "qcow2"
    read_only: bool = False
    # One file many guests read at once (an OCI image's cached disk): shareable, and
    # never relabelled, since libvirt would hand it back to root when any of them stops.
    shared: bool = False


def guest_memory(memory: int | None, disk_boot: bool = False) -> int:
    """Bytes of guest RAM for a sandbox memory limit, rounded up to whole MiB."""
    if memory is None:
        total = DISK_DEFAULT_MEMORY if disk_boot else DEFAULT_MEMORY
    else:
        total = memory + (DISK_GUEST_OVERHEAD if disk_boot else GUEST_OVERHEAD)
    return math.ceil(total / MIB) * MIB


def vcpus(cpus: float | None) -> int:
    return max(1, math.ceil(cpus)) if cpus else 1


def _forward(port: PortMapping) -> str:
    # IPv4 host addresses only: `refusals` refused the others.
    target = f"{GUEST_ADDRESS}:{port.guest_port}"
    return f"hostfwd={port.protocol}:{port.host_ip}:{port.host_port}-{target}"


def network_arguments(plan: LaunchPlan) -> list[str]:
    """QEMU arguments for the guest's user-mode networks (see `_guest_config.nics`)."""
    inbound, outbound = nics(plan)
    arguments = []
    if inbound:
        forwards = [_forward(port) for port in plan.ports]
        netdev = ",".join(["user", "id=sbxin", f"net={INBOUND_NET}.0/24", "restrict=on", *forwards])
        arguments += ["-netdev", netdev, "-device", _nic("sbxin", INBOUND_MAC, 0x1E)]
    if outbound:
        netdev = f"user,id=sbxout,net={OUTBOUND_NET}.0/24,restrict=off"
        arguments += ["-netdev", netdev, "-device", _nic("sbxout", OUTBOUND_MAC, 0x1F)]
    return arguments


def _nic(netdev: str, mac: str, slot: int) -> str:
    # High PCI slots, clear of those libvirt assigns; no option ROM: nothing boots from it.
    return f"virtio-net-pci,netdev={netdev},mac={mac},bus=pci.0,addr={slot:#x},romfile="


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def _os(root: ET.Element, boot: Boot | None) -> None:
    os_element = _sub(root, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="pc")
    if boot is None:
        _sub(os_element, "boot", dev="hd")
        return
    if boot.loader:
        _sub(os_element, "loader", boot.loader, type="rom", readonly="yes")
    _sub(os_element, "kernel", boot.kernel)
    _sub(os_element, "initrd", boot.initrd)
    _sub(os_element, "cmdline", boot.cmdline)


def service_channels() -> list[str]:
    return [f"{SERVICE_CHANNEL}{index}" for index in range(SERVICE_PORTS)]


def _devices(
    root: ET.Element,
    console_log: str,
    shares: Sequence[Share],
    disks: Sequence[Disk],
    channels: Sequence[str],
    members: Sequence[Member],
) -> None:
    devices = _sub(root, "devices")
    for index, disk in enumerate(disks):
        element = _sub(devices, "disk", type="file", device="disk")
        _sub(element, "driver", name="qemu", type=disk.format)
        source = _sub(element, "source", file=disk.path)
        if disk.shared:
            _sub(source, "seclabel", model="dac", relabel="no")
        _sub(element, "target", dev="vd" + "abcdefgh"[index], bus="virtio")
        if disk.read_only:
            _sub(element, "readonly")
        if disk.shared:
            _sub(element, "shareable")
    for share in shares:
        # squash: QEMU runs unprivileged, so it cannot chown what the guest creates;
        # it creates files as itself and ignores ownership changes. A volume's files are
        # QEMU's alone: "mapped" keeps the guest's owner and mode in xattrs.
        mode = "mapped" if share.volume else "squash"
        element = _sub(devices, "filesystem", type="mount", accessmode=mode)
        _sub(element, "source", dir=share.source)
        _sub(element, "target", dir=share.tag)
        if share.read_only:
            _sub(element, "readonly")
    serial = _sub(devices, "serial", type="file")
    _sub(serial, "source", path=console_log)
    _sub(serial, "target", port="0")
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name=AGENT_CHANNEL)
    for name in channels:
        # No source path: libvirt makes the socket in its own root-only channel directory.
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name=name)
    for member in members:
        # A named network: virtio on its libvirt network, found in the guest by its MAC;
        # no option ROM, nothing boots from it.
        interface = _sub(devices, "interface", type="network")
        _sub(interface, "mac", address=member.mac)
        _sub(interface, "source", network=member.source)
        _sub(interface, "model", type="virtio")
        _sub(interface, "rom", enabled="no")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")


def _network(root: ET.Element, plan: LaunchPlan) -> None:
    arguments = network_arguments(plan)
    if not arguments:
        return  # no network device at all: the guest has loopback only
    root.set("xmlns:qemu", QEMU_NAMESPACE)
    commandline = _sub(root, "qemu:commandline")
    for value in arguments:
        _sub(commandline, "qemu:arg", value=value)


def domain_xml(
    plan: LaunchPlan,
    *,
    accel: str,
    console_log: str,
    boot: Boot | None = None,
    disks: Sequence[Disk] = (),
    shares: Sequence[Share] = (),
    members: Sequence[Member] = (),
) -> str:
    """The transient domain for `plan`: `accel` is "kvm" or "qemu" (TCG).

    With `boot`, the kernel boots directly; without, the firmware boots the first disk.
    `members`: the sandbox's NICs on named networks (`_named_networks.join`).
    """
    root = ET.Element("domain", type=accel)
    _sub(root, "name", plan.name)
    _sub(root, "title", "sandboxer sandbox")
    metadata_holder(root, "sandbox", plan.labels)
    memory = guest_memory(plan.memory, disk_boot=boot is None or boot.full_system)
    _sub(root, "memory", str(memory // MIB), unit="MiB")
    _sub(root, "vcpu", str(vcpus(plan.cpus)))
    _os(root, boot)
    if accel == "kvm":
        _sub(root, "cpu", mode="host-passthrough")
    _sub(root, "clock", offset="utc")
    # Transient and disposable: whatever ends the guest ends the domain.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(root, event, "destroy")
    # Only sandboxer's own initramfs runs the command service; a user's disk does not.
    _devices(root, console_log, shares, disks, service_channels() if boot else (), members)
    _network(root, plan)
    return ET.tostring(root, encoding="unicode")
