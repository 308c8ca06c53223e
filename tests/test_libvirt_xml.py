"""The libvirt backend's pure mappings: plan -> domain XML and plan -> guest configuration.

No engine is touched: these run without libvirtd (the error-mapping test needs only
libvirt-python, the backend's SDK).
"""

from __future__ import annotations

import io
import shlex
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sandboxer import Mount, PortMapping, SandboxSpec, UnsupportedFeature, load_profile
from sandboxer._backend import LaunchPlan
from sandboxer._launch import make_plan
from sandboxer.backends.libvirt import (
    _cpio,
    _domain,
    _guest_config,
    _kernel,
    _kmod,
    _metadata,
    _refusals,
)
from sandboxer.backends.libvirt._guest_scripts import AGENT_CHANNEL, GUEST_ADDRESS

MIB = 1024 * 1024
QEMU = "{" + _domain.QEMU_NAMESPACE + "}"


def plan_for(**fields: object) -> LaunchPlan:
    return make_plan(SandboxSpec(backend="libvirt", **fields))  # type: ignore[arg-type]


def domain(plan: LaunchPlan, **kwargs: object) -> ET.Element:
    arguments: dict[str, object] = {
        "accel": "qemu",
        "console_log": "/run/x/console.log",
        "boot": _domain.Boot("/img/vmlinuz", "/run/x/initrd.img"),
    }
    arguments.update(kwargs)
    return ET.fromstring(_domain.domain_xml(plan, **arguments))  # type: ignore[arg-type]


def conf(plan: LaunchPlan) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in _guest_config.sandbox_conf(plan).splitlines())
    return {key: " ".join(shlex.split(value)) for key, value in pairs}


def read_cpio(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, content) of a newc archive."""
    entries, offset = {}, 0
    while True:
        header = data[offset : offset + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = offset + 110
        name = data[name_start : name_start + name_size - 1].decode()
        data_start = name_start + name_size + (-(110 + name_size) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data[data_start : data_start + size])
        offset = data_start + size + (-size % 4)


# domain XML ----------------------------------------------------------------------------
def test_hardened_default_is_a_small_vm_with_no_network_device() -> None:
    plan = plan_for()
    root = domain(plan)
    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("name") == plan.name
    assert int(root.findtext("memory") or 0) == (256 + 128)  # the limit plus the guest's own
    assert root.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert root.findtext("vcpu") == "1"
    assert root.find(f"{QEMU}commandline") is None
    assert root.find("devices/interface") is None
    assert root.find("devices/filesystem") is None
    assert [root.findtext(e) for e in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy"] * 3


def test_agent_channel_console_and_no_stray_devices() -> None:
    devices = domain(plan_for(), console_log="/var/x/console.log").find("devices")
    assert devices is not None
    channel = devices.find("channel/target")
    assert channel is not None
    assert channel.get("type") == "virtio" and channel.get("name") == AGENT_CHANNEL
    assert devices.find("serial/source").get("path") == "/var/x/console.log"  # type: ignore[union-attr]
    assert devices.find("memballoon").get("model") == "none"  # type: ignore[union-attr]
    assert devices.find("controller[@type='usb']").get("model") == "none"  # type: ignore[union-attr]


def test_labels_travel_in_metadata_and_come_back() -> None:
    plan = plan_for(labels={"team": "a&b <c>", "quote": '"x"'})
    root = domain(plan)
    holder = root.find("metadata")[0]  # type: ignore[index]
    assert holder.tag == "{" + _metadata.NAMESPACE + "}sandbox"
    back = _metadata.parse_labels(ET.tostring(holder, encoding="unicode"))
    assert back == dict(plan.labels)
    assert back["team"] == "a&b <c>" and back["sandboxer.managed"] == "true"


def test_direct_kernel_boot() -> None:
    boot = _domain.Boot("/img/vmlinuz", "/run/x/initrd.img", "/usr/share/qemu/qboot.rom")
    os_element = domain(plan_for(), boot=boot).find("os")
    assert os_element is not None
    assert os_element.findtext("kernel") == "/img/vmlinuz"
    assert os_element.findtext("initrd") == "/run/x/initrd.img"
    assert os_element.find("loader").get("type") == "rom"  # type: ignore[union-attr]
    cmdline = os_element.findtext("cmdline") or ""
    assert "console=ttyS0" in cmdline.split() and "panic=-1" in cmdline.split()


def test_accelerator_picks_domain_type_and_cpu() -> None:
    assert domain(plan_for(), accel="kvm").find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert domain(plan_for(), accel="qemu").find("cpu") is None


def test_resources_map_to_vcpus_and_memory() -> None:
    root = domain(plan_for(resources={"cpus": 1.5, "memory": "1GiB"}))
    assert root.findtext("vcpu") == "2"
    assert int(root.findtext("memory") or 0) == 1024 + 128
    assert _domain.guest_memory(None) == _domain.DEFAULT_MEMORY
    assert _domain.guest_memory(100 * MIB + 1) == 229 * MIB  # rounded up to whole MiB
    assert _domain.vcpus(None) == 1 and _domain.vcpus(0.25) == 1 and _domain.vcpus(3.0) == 3


def test_mounts_become_9p_shares_read_only_where_asked(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plan = plan_for(
        mounts=[
            Mount(str(tmp_path / "a"), "/data", read_only=True),
            Mount(str(tmp_path / "b"), "/work"),
        ]
    )
    shares = _guest_config.shares(plan)
    filesystems = domain(plan, shares=shares).findall("devices/filesystem")
    assert [fs.find("target").get("dir") for fs in filesystems] == ["sbx0", "sbx1"]  # type: ignore[union-attr]
    assert [fs.find("source").get("dir") for fs in filesystems] == [  # type: ignore[union-attr]
        str(tmp_path / "a"),
        str(tmp_path / "b"),
    ]
    assert [fs.find("readonly") is not None for fs in filesystems] == [True, False]
    assert {fs.get("accessmode") for fs in filesystems} == {"squash"}
    assert _guest_config.mounts_file(plan) == "sbx0 ro /data\nsbx1 rw /work\n"


def test_a_target_the_guest_cannot_read_back_is_refused(tmp_path: Path) -> None:
    (refusal,) = _refusals.refusals(plan_for(mounts=[Mount(str(tmp_path), "/da\nta")]))
    assert "newline" in refusal


def _netdevs(plan: LaunchPlan) -> dict[str, list[str]]:
    """netdev id -> its options, from the domain's QEMU arguments (checked pairwise)."""
    args = [a.get("value") or "" for a in domain(plan).findall(f"{QEMU}commandline/{QEMU}arg")]
    found = {}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag == "-netdev":
            options = value.split(",")
            found[options[1].removeprefix("id=")] = options
        else:
            assert flag == "-device" and value.startswith("virtio-net-pci,netdev=")
            assert "romfile=" in value.split(",")
    return found


def test_bridge_with_ports_gets_a_restricted_inbound_and_an_outbound_network() -> None:
    plan = plan_for(
        network="bridge",
        ports=[PortMapping(8080, 18080), PortMapping(53, 15353, protocol="udp")],
    )
    netdevs = _netdevs(plan)
    assert set(netdevs) == {"sbxin", "sbxout"}
    inbound = netdevs["sbxin"]
    assert inbound[:4] == ["user", "id=sbxin", "net=10.0.2.0/24", "restrict=on"]
    assert f"hostfwd=tcp:127.0.0.1:18080-{GUEST_ADDRESS}:8080" in inbound
    assert f"hostfwd=udp:127.0.0.1:15353-{GUEST_ADDRESS}:53" in inbound
    assert netdevs["sbxout"] == ["user", "id=sbxout", "net=10.0.3.0/24", "restrict=off"]
    assert (conf(plan)["SBX_NET_IN"], conf(plan)["SBX_NET_OUT"]) == ("1", "1")


def test_bridge_without_ports_is_outbound_only() -> None:
    plan = plan_for(network="bridge")
    assert set(_netdevs(plan)) == {"sbxout"}
    assert (conf(plan)["SBX_NET_IN"], conf(plan)["SBX_NET_OUT"]) == ("0", "1")


def test_isolated_network_is_restricted_but_still_forwards() -> None:
    plan = plan_for(network="isolated", ports=[PortMapping(80, 18081)])
    netdevs = _netdevs(plan)
    assert set(netdevs) == {"sbxin"}
    assert "restrict=on" in netdevs["sbxin"]
    assert f"hostfwd=tcp:127.0.0.1:18081-{GUEST_ADDRESS}:80" in netdevs["sbxin"]
    assert set(_netdevs(plan_for(network="isolated"))) == {"sbxin"}
    assert (conf(plan)["SBX_NET_IN"], conf(plan)["SBX_NET_OUT"]) == ("1", "0")


def test_ipv6_host_addresses_are_refused() -> None:
    plan = plan_for(network="bridge", ports=[PortMapping(80, 18082, host_ip="::1")])
    (refusal,) = _refusals.refusals(plan)
    assert "IPv4" in refusal


# guest configuration -------------------------------------------------------------------
def test_hardened_guest_settings() -> None:
    values = conf(plan_for(name="web-1"))
    assert values["SBX_HOSTNAME"] == "web-1"
    assert (values["SBX_NET_IN"], values["SBX_NET_OUT"]) == ("0", "0")
    assert (values["SBX_ROOT_RO"], values["SBX_SECCOMP"], values["SBX_NNP"]) == ("1", "1", "1")
    assert values["SBX_USER"] == "1000:1000"
    assert values["SBX_BOUNDING"] == "-all" and values["SBX_AMBIENT"] == ""
    assert values["SBX_PIDS"] == "128" and values["SBX_MEMORY"] == str(256 * MIB)
    assert values["SBX_CPU_MAX"] == ""
    assert _guest_config.tmpfs_file(plan_for()) == f"{64 * MIB} 1777 /tmp\n"


def test_default_profile_guest_settings() -> None:
    values = conf(plan_for(profile="default", resources={"cpus": 0.5}))
    assert (values["SBX_ROOT_RO"], values["SBX_SECCOMP"], values["SBX_NNP"]) == ("0", "0", "0")
    assert values["SBX_USER"] == "" and values["SBX_BOUNDING"] == ""
    assert values["SBX_PIDS"] == "" and values["SBX_MEMORY"] == ""
    assert values["SBX_CPU_MAX"] == "50000 100000"


def test_capability_sets_for_setpriv() -> None:
    web = load_profile("hardened").derive("web", cap_add=["NET_BIND_SERVICE"])
    assert _guest_config.capability_sets(plan_for(profile=web)) == (
        "-all,+net_bind_service",
        "-all,+net_bind_service",
    )
    some = load_profile("default").derive("some", cap_drop=["NET_RAW", "CAP_SYS_ADMIN"])
    assert _guest_config.capability_sets(plan_for(profile=some)) == ("-net_raw,-sys_admin", "")


def test_guest_files_travel_as_an_appendable_cpio() -> None:
    files = _guest_config.guest_files(plan_for(), b"\x01bpf")
    entries = read_cpio(_guest_config.config_archive(files))
    assert set(entries) == set(files)
    for name, data in files.items():
        mode, content = entries[name]
        assert content == data and mode & 0o170000 == 0o100000 and mode & 0o777 == 0o644
    assert len(_guest_config.config_archive(files)) % 4 == 0


def test_cpio_holds_devices_links_and_refuses_duplicates() -> None:
    buffer = io.BytesIO()
    writer = _cpio.CpioWriter(buffer)
    writer.directory("dev")
    writer.char_device("dev/console", 5, 1)
    writer.symlink("bin/sh", "/bin/busybox")
    with pytest.raises(ValueError):
        writer.directory("/dev/")
    writer.close()
    entries = read_cpio(buffer.getvalue())
    assert entries["dev/console"][0] & 0o170000 == 0o020000
    assert entries["bin/sh"] == (0o120777, b"/bin/busybox")


# image building blocks -----------------------------------------------------------------
def test_module_load_order_follows_depends(tmp_path: Path) -> None:
    (tmp_path / "drivers").mkdir()
    (tmp_path / "drivers" / "base.ko").write_bytes(b"\x7fELF\0depends=\0")
    (tmp_path / "drivers" / "mid-dev.ko").write_bytes(b"\x7fELF\0depends=base\0")
    (tmp_path / "top.ko").write_bytes(b"\x7fELF\0license=GPL\0depends=mid_dev,base\0")
    order = _kmod.load_order(tmp_path, ["top", "base"])
    assert [p.name for p in order] == ["base.ko", "mid-dev.ko", "top.ko"]
    with pytest.raises(Exception, match="missing_one"):
        _kmod.load_order(tmp_path, ["missing_one"])


def _elf_with_note(name: bytes, note_type: int) -> bytes:
    note = struct.pack("<III", len(name) + 1, 4, note_type) + name + b"\0" * (4 - len(name) % 4)
    note += b"\0" * 4
    phoff, phentsize = 64, 56
    header = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, 1, 0, 0, 0)
    note_offset = phoff + phentsize
    program = struct.pack("<IIQQQQQQ", 4, 4, note_offset, 0, 0, len(note), len(note), 4)
    return header + program + note


def test_pvh_entry_note_is_recognised() -> None:
    assert _kernel.has_pvh_entry(_elf_with_note(b"Xen", 18))
    assert not _kernel.has_pvh_entry(_elf_with_note(b"Xen", 5))
    assert not _kernel.has_pvh_entry(b"MZ not an elf")
    assert _kernel.pvh_kernel(b"bzImage with no payload") is None


# errors --------------------------------------------------------------------------------
def test_every_libvirt_error_code_maps_into_the_error_tree() -> None:
    import libvirt  # the backend's SDK: installed with sandboxer[libvirt]

    from sandboxer import (
        BackendUnavailable,
        EngineError,
        InvalidSpec,
        SandboxError,
        SandboxExists,
        SandboxNotFound,
    )
    from sandboxer.backends.libvirt._errors import translate

    def error(code: int, message: str = "boom", domain: int = 0) -> object:
        exc = libvirt.libvirtError(message)
        exc.err = (code, domain, message, 2, None, None, None, 0, 0)
        return exc

    codes = {name: value for name, value in vars(libvirt).items() if name.startswith("VIR_ERR_")}
    for value in codes.values():
        assert isinstance(translate(error(value)), SandboxError)
    assert isinstance(translate(error(libvirt.VIR_ERR_NO_DOMAIN)), SandboxNotFound)
    assert isinstance(translate(error(libvirt.VIR_ERR_NO_CONNECT)), BackendUnavailable)
    assert isinstance(translate(error(libvirt.VIR_ERR_ACCESS_DENIED)), BackendUnavailable)
    assert isinstance(translate(error(libvirt.VIR_ERR_CONFIG_UNSUPPORTED)), UnsupportedFeature)
    assert isinstance(translate(error(libvirt.VIR_ERR_XML_ERROR)), InvalidSpec)
    assert isinstance(translate(error(libvirt.VIR_ERR_AGENT_UNRESPONSIVE)), EngineError)
    exists = error(libvirt.VIR_ERR_OPERATION_FAILED, "domain 'x' already exists with uuid")
    assert isinstance(translate(exists), SandboxExists)
    lost = error(libvirt.VIR_ERR_SYSTEM_ERROR, "Cannot recv data", libvirt.VIR_FROM_RPC)
    assert isinstance(translate(lost), BackendUnavailable)
    too_big = error(libvirt.VIR_ERR_RPC, "Unable to encode message payload", libvirt.VIR_FROM_RPC)
    assert isinstance(translate(too_big), EngineError)
