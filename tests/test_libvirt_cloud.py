"""A user's disk image on libvirt: the NoCloud seed, the domain, the overlay (no libvirtd).

What the seed makes the guest do is checked on a real cloud image in
integration/test_libvirt_cloud_image.py; here, what we hand to cloud-init.
"""

from __future__ import annotations

import base64
import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from sandboxer import ImageNotFound, Mount, PortMapping, SandboxSpec
from sandboxer._backend import LaunchPlan
from sandboxer._launch import make_plan
from sandboxer.backends.libvirt import _cloud_guest, _disk, _domain, _refusals
from sandboxer.backends.libvirt._guest_scripts import EXEC, EXEC_PATH, INBOUND_MAC, OUTBOUND_MAC

MIB = 1024 * 1024
IMAGE = "/srv/images/debian-12.qcow2"


def plan_for(**fields: object) -> LaunchPlan:
    return make_plan(SandboxSpec(backend="libvirt", image=IMAGE, **fields))  # type: ignore[arg-type]


def cloud_config(plan: LaunchPlan, bpf: bytes = b"BPF") -> dict[str, Any]:
    text = _cloud_guest.user_data(plan, bpf)
    header, _, body = text.partition("\n")
    assert header == "#cloud-config"
    config: dict[str, Any] = json.loads(body)  # JSON is YAML: cloud-init reads it as such
    return config


def written(plan: LaunchPlan, bpf: bytes = b"BPF") -> dict[str, tuple[bytes, str]]:
    """path -> (content, permissions) of the seed's write_files."""
    return {
        entry["path"]: (base64.b64decode(entry["content"]), entry["permissions"])
        for entry in cloud_config(plan, bpf)["write_files"]
    }


def drop_in(plan: LaunchPlan) -> list[str]:
    return _cloud_guest.agent_drop_in(plan).splitlines()


# the seed ------------------------------------------------------------------------------
def test_seed_carries_the_built_in_guests_files_and_the_set_up() -> None:
    files = written(plan_for(), bpf=b"\x01\x02")
    assert files[EXEC_PATH] == (EXEC.encode(), "0755")
    assert files["/etc/sandboxer/seccomp.bpf"] == (b"\x01\x02", "0644")
    assert b"SBX_ROOT_RO=1" in files["/etc/sandboxer/sandbox.conf"][0]
    setup, mode = files[_cloud_guest.SETUP_PATH]
    assert mode == "0755" and setup.startswith(b"#!/bin/sh")
    assert b"@" not in setup  # every placeholder filled in
    assert _cloud_guest.READY_FILE.encode() in setup
    assert cloud_config(plan_for())["runcmd"] == [[_cloud_guest.SETUP_PATH]]


def test_seed_creates_no_default_user_and_no_logins() -> None:
    config = cloud_config(plan_for())
    assert [user["name"] for user in config["users"]] == ["sandbox"]  # not "default"
    assert config["users"][0]["uid"] == 1000 and config["users"][0]["lock_passwd"] is True
    assert config["disable_root"] is True
    assert config["ssh_pwauth"] is False


def test_set_up_script_is_valid_shell(tmp_path: Path) -> None:
    script = tmp_path / "setup"
    script.write_text(_cloud_guest.setup_script())
    subprocess.run(["sh", "-n", str(script)], check=True)


def test_meta_data_names_the_instance_after_the_sandbox() -> None:
    plan = plan_for()
    meta = json.loads(_cloud_guest.meta_data(plan))
    assert meta == {"instance-id": plan.name, "local-hostname": plan.name}


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({}, []),
        ({"network": "isolated"}, ["sbxin"]),
        ({"network": "bridge"}, ["sbxout"]),
        ({"network": "bridge", "ports": [PortMapping(80)]}, ["sbxin", "sbxout"]),
    ],
)
def test_network_config_gives_each_nic_its_static_address(
    fields: dict[str, Any], names: list[str]
) -> None:
    config = json.loads(_cloud_guest.network_config(plan_for(**fields)))
    assert config["version"] == 2
    assert sorted(config["ethernets"]) == names
    for name, nic in config["ethernets"].items():
        mac = INBOUND_MAC if name == "sbxin" else OUTBOUND_MAC
        assert nic["match"] == {"macaddress": mac} and nic["set-name"] == name
        assert "dhcp4" not in nic
    if "sbxout" in names:
        assert config["ethernets"]["sbxout"]["gateway4"] == "10.0.3.2"


# the agent's drop-in -----------------------------------------------------------------
def test_hardened_agent_runs_filtered_without_new_privileges_on_a_read_only_system() -> None:
    lines = drop_in(plan_for())
    assert lines[:2] == ["[Service]", "ExecStart="]
    start = lines[2]
    assert start.startswith("ExecStart=/usr/bin/unshare --pid --fork --mount-proc ")
    init = f"{_cloud_guest.AGENT_INIT_PATH} --seccomp /etc/sandboxer/seccomp.bpf -- "
    assert init + "/usr/sbin/qemu-ga " in start
    assert start.endswith(f"-t {_cloud_guest.AGENT_STATE_DIR}")
    assert "NoNewPrivileges=yes" in lines and "ProtectSystem=strict" in lines
    assert 'ReadWritePaths="/tmp"' in lines  # the hardened profile's tmpfs
    assert 'ReadWritePaths="/run/sandboxer"' in lines


def test_default_profile_agent_has_no_filter_and_a_writable_system() -> None:
    lines = drop_in(plan_for(profile="default"))
    assert not any(line.startswith(("ProtectSystem", "ReadWritePaths")) for line in lines)
    assert f"{_cloud_guest.AGENT_INIT_PATH} -- /usr/sbin/qemu-ga" in lines[2]  # no filter


def test_read_write_mounts_stay_writable_under_a_read_only_system(tmp_path: Path) -> None:
    mounts = [
        Mount(str(tmp_path), "/data/rw 50%"),
        Mount(str(tmp_path), "/data/ro", read_only=True),
    ]
    lines = drop_in(plan_for(mounts=mounts))
    assert 'ReadWritePaths="/data/rw 50%%"' in lines  # quoted, '%' escaped for systemd
    assert not any("/data/ro" in line for line in lines)


def test_unit_file_refuses_a_path_it_cannot_quote(tmp_path: Path) -> None:
    (refusal,) = _refusals.refusals(plan_for(mounts=[Mount(str(tmp_path), '/data/"x"')]))
    assert "Mount.target" in refusal and "double quote" in refusal


def test_agent_init_is_valid_python() -> None:
    compile(_cloud_guest.AGENT_INIT, _cloud_guest.AGENT_INIT_PATH, "exec")


# the domain ----------------------------------------------------------------------------
def test_disk_boot_domain_boots_the_overlay_with_the_seed_beside_it() -> None:
    disks = [
        _domain.Disk("/run/x/overlay.qcow2"),
        _domain.Disk("/run/x/seed.iso", format="raw", read_only=True),
    ]
    root = ET.fromstring(
        _domain.domain_xml(plan_for(), accel="qemu", console_log="/run/x/c.log", disks=disks)
    )
    assert root.find("os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    assert root.find("os/kernel") is None
    found = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in found] == ["vda", "vdb"]  # type: ignore[union-attr]
    assert [d.find("driver").get("type") for d in found] == ["qcow2", "raw"]  # type: ignore[union-attr]
    assert found[0].find("readonly") is None and found[1].find("readonly") is not None
    # systemd and cloud-init need more room than the built-in guest
    assert int(root.findtext("memory") or 0) == 256 + _domain.DISK_GUEST_OVERHEAD // MIB


# the user's disk -----------------------------------------------------------------------
def test_user_disk_format_from_its_header(tmp_path: Path) -> None:
    qcow2, raw = tmp_path / "a.qcow2", tmp_path / "b.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "1M"], check=True)
    raw.write_bytes(b"\0" * 512)
    assert _disk.user_disk(str(qcow2)).format == "qcow2"
    assert _disk.user_disk(str(raw)).format == "raw"


def test_missing_or_unreadable_disk_is_image_not_found(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound, match="no disk image at"):
        _disk.user_disk(str(tmp_path / "missing.qcow2"))
    (tmp_path / "dir.img").mkdir()
    with pytest.raises(ImageNotFound, match="is a directory"):
        _disk.user_disk(str(tmp_path / "dir.img"))


def test_overlay_reads_through_to_the_base_and_seed_is_a_cidata_volume(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * MIB)
    overlay = tmp_path / "overlay.qcow2"
    _disk.create_overlay(_disk.user_disk(str(base)), overlay)
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(overlay)], capture_output=True, check=True
        ).stdout
    )
    assert info["backing-filename"] == str(base) and info["backing-filename-format"] == "raw"
    assert info["virtual-size"] == MIB
    assert base.read_bytes() == b"\0" * MIB  # the user's image is never written
    seed = tmp_path / "seed.iso"
    _disk.create_seed({"meta-data": b"{}\n", "user-data": b"#cloud-config\n{}\n"}, seed)
    volume = seed.read_bytes()[32768 + 40 : 32768 + 72].decode().strip()
    assert volume == _disk.SEED_LABEL  # the primary volume descriptor's identifier
    assert list(tmp_path.glob("seed-*")) == []  # the scratch directory is gone
