"""OCI images on the libvirt backend, without libvirtd: the ext4 disk built from a tree,
the image config applied to every process, the guest settings and the scripts' layout."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from sandboxer import SandboxSpec
from sandboxer._backend import ExecRequest, LaunchPlan
from sandboxer._launch import make_plan
from sandboxer.backends.libvirt import _domain, _guest_config, _guest_scripts, _oci
from sandboxer.backends.libvirt._backend import plan_main
from sandboxer.images import ImageConfig
from sandboxer.images.store import LocalImage

APP = ImageConfig(
    entrypoint=("/entry.sh",),
    cmd=("sleep", "infinity"),
    env=(("PATH", "/opt/bin:/usr/bin:/bin"), ("MODE", "image")),
    workdir="/srv/app",
    user="appuser",
)


def plan_for(**fields: object) -> LaunchPlan:
    return make_plan(SandboxSpec(backend="libvirt", **fields))  # type: ignore[arg-type]


def conf(plan: LaunchPlan, image: ImageConfig | None) -> dict[str, str]:
    text = _guest_config.sandbox_conf(plan, image)
    pairs = (line.split("=", 1) for line in text.splitlines())
    return {key: " ".join(shlex.split(value)) for key, value in pairs}


def request(**fields: object) -> ExecRequest:
    values: dict[str, object] = {
        "argv": ("true",),
        "env": {},
        "workdir": None,
        "user": None,
        "stdin": None,
        "timeout": None,
    }
    values.update(fields)
    return ExecRequest(**values)  # type: ignore[arg-type]


# which images boot from a disk --------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "oci"),
    [
        ("sandboxer/debian", True),
        ("127.0.0.1:5000/team/app:1", True),
        ("alpine", True),
        ("sandboxer/minimal", False),
        ("sandboxer/system", False),
        ("/srv/images/debian.qcow2", False),
    ],
)
def test_which_images_are_oci_images(image: str, oci: bool) -> None:
    assert _oci.is_oci_image(image) is oci


# the disk ----------------------------------------------------------------------------
def _tree(root: Path) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "home/app").mkdir(parents=True)
    tool = root / "usr/bin/tool"
    tool.write_bytes(b"\x7fELF" + b"x" * 5000)
    tool.chmod(0o4755)
    (root / "home/app/notes").write_text("mine")
    os.chown(root / "home/app", 4321, 4321)
    os.chown(root / "home/app/notes", 4321, 4321)
    os.link(tool, root / "usr/bin/tool-again")
    (root / "bin").symlink_to("usr/bin")
    (root / "escape").symlink_to("/etc")  # counted as a link, never followed
    return root


def test_tree_usage_counts_whole_blocks_and_never_follows_links(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    used, entries = _oci.tree_usage(root)
    assert entries == 9
    assert used % _oci.BLOCK == 0
    assert used < 64 * 1024  # /etc behind the link is not counted


def test_disk_size_leaves_headroom_in_whole_blocks() -> None:
    size = _oci.disk_size(100 * 1024 * 1024)
    assert size % _oci.BLOCK == 0
    assert size >= 110 * 1024 * 1024 + _oci.HEADROOM_BYTES


def _debugfs(disk: Path, command: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", command, str(disk)], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_the_disk_keeps_owners_modes_setuid_and_links_and_adds_no_lost_found(
    tmp_path: Path,
) -> None:
    root = _tree(tmp_path / "tree")
    image = LocalImage(
        reference="127.0.0.1:5000/t/app:1",
        digest="sha256:" + "0" * 64,
        config=APP,
        rootfs=root,
        size=0,
        layout=tmp_path / "layout",
        layout_tag="t",
    )
    disk = tmp_path / "rootfs.ext4"
    _oci.build_disk(image, disk)
    assert disk.stat().st_mode & 0o777 == 0o600  # opened to QEMU's group per sandbox
    listing = _debugfs(disk, "ls -l /")
    assert "lost+found" not in listing and "escape" in listing
    tool = _debugfs(disk, "stat /usr/bin/tool")
    assert re.search(r"Mode:\s+04755", tool) and re.search(r"Links: 2", tool)
    notes = _debugfs(disk, "stat /home/app/notes")
    assert re.search(r"User:\s+4321\s+Group:\s+4321", notes)
    assert "/etc" in _debugfs(disk, "stat /escape")  # the link itself, as it was
    assert _debugfs(disk, "cat /home/app/notes") == "mine"


def test_mke2fs_builds_a_read_only_style_file_system_from_the_tree(tmp_path: Path) -> None:
    argv = _oci.mke2fs_argv(tmp_path / "tree", tmp_path / "disk", 64 * 1024 * 1024, 100)
    assert argv[0] == "mke2fs" and argv[-1] == "65536k"
    assert argv[argv.index("-d") + 1] == str(tmp_path / "tree")
    assert "^has_journal" in argv[argv.index("-O") + 1]
    assert argv[argv.index("-L") + 1] == "sandboxer-root"


# the image config --------------------------------------------------------------------
def test_every_exec_gets_the_image_config_beneath_its_own() -> None:
    applied = _oci.exec_request(APP, request(env={"MODE": "caller", "X": "1"}))
    assert applied.env == {"PATH": "/opt/bin:/usr/bin:/bin", "MODE": "caller", "X": "1"}
    # No user: the guest's default (SBX_USER, the image's User unless the plan has one),
    # the same for the file calls as for execs.
    assert (applied.workdir, applied.user) == ("/srv/app", None)
    own = _oci.exec_request(APP, request(workdir="/tmp", user="1000:1000"))
    assert (own.workdir, own.user) == ("/tmp", "1000:1000")
    bare = _oci.exec_request(ImageConfig(), request())
    assert (bare.workdir, bare.user, bare.env) == ("/", None, {})


def test_the_main_process_follows_dockers_rules() -> None:
    main = _oci.main_request(APP, plan_for(image="sandboxer/debian", profile="default"))
    assert main is not None
    assert main.argv == ("/entry.sh", "sleep", "infinity")
    assert (main.user, main.workdir, main.env["MODE"]) == (None, "/srv/app", "image")
    command = _oci.main_request(APP, plan_for(image="x/y", command=["echo", "hi"]))
    assert command is not None and command.argv == ("/entry.sh", "echo", "hi")
    assert command.user == "1000:1000"  # the hardened profile's user wins over the image's
    assert _oci.main_request(ImageConfig(), plan_for(image="x/y")) is None


def test_the_main_process_of_the_built_in_guest_is_the_spec_command() -> None:
    assert plan_main(plan_for(), None) is None
    main = plan_main(plan_for(command=["sleep", "1"], env={"A": "b"}), None)
    assert main is not None and main.argv == ("sleep", "1") and main.env == {"A": "b"}


def test_guest_settings_of_an_oci_image() -> None:
    values = conf(plan_for(image="x/y", profile="default"), APP)
    assert values["SBX_IMAGE_DISK"] == "1"
    assert values["SBX_USER"] == "appuser"  # the image's User: neither spec nor profile set one
    assert values["SBX_WORKDIR"] == "/srv/app"
    hardened = conf(plan_for(image="x/y", workdir="/data"), APP)
    assert (hardened["SBX_USER"], hardened["SBX_WORKDIR"]) == ("1000:1000", "/data")
    builtin = conf(plan_for(), None)
    assert (builtin["SBX_IMAGE_DISK"], builtin["SBX_WORKDIR"]) == ("0", "")


# the guest's layout -------------------------------------------------------------------
def test_root_run_steps_in_an_oci_image_use_only_sandboxers_own_programs() -> None:
    layout = _guest_scripts.OCI
    exec_script = _guest_scripts.exec_script(layout)
    init = _guest_scripts.init_script(layout)
    for script in (exec_script, init):
        # (systemd's instance units have an @ of their own)
        assert "@" not in script.replace("$@", "").replace("getty@ttyS0", "")
        assert "/usr/bin/setpriv" not in script and "/usr/bin/env " not in script
    assert "PATH=/.sandboxer/bin\n" in exec_script
    assert "/.sandboxer/lib/ld-linux-x86-64.so.2 --library-path /.sandboxer/lib" in exec_script
    assert ". /.sandboxer/etc/sandbox.conf" in init
    # qemu-ga runs the scripts with sandboxer's shell: the image's #! is never read.
    assert layout.command(layout.exec_path, ["a"]) == (
        "/.sandboxer/bin/sh",
        ["/.sandboxer/sbx-exec", "a"],
    )
    # File calls use sandboxer's tar and shell: an image may have neither.
    assert (layout.tar, layout.sh) == ("/.sandboxer/bin/tar", "/.sandboxer/bin/sh")
    builtin = _guest_scripts.BUILTIN
    assert builtin.command(builtin.exec_path, ["a"]) == ("/sbin/sbx-exec", ["a"])
    assert "exec /usr/bin/setpriv" in _guest_scripts.EXEC


# the domain --------------------------------------------------------------------------
def test_the_image_disk_is_read_only_shared_raw_and_never_relabelled() -> None:
    xml = _domain.domain_xml(
        plan_for(image="sandboxer/debian"),
        accel="qemu",
        console_log="/run/x/console.log",
        boot=_domain.Boot("/img/vmlinuz", "/run/x/initrd.img"),
        disks=[_domain.Disk("/run/x/rootfs.ext4", format="raw", read_only=True, shared=True)],
    )
    disk = ET.fromstring(xml).find("devices/disk")
    assert disk is not None
    assert disk.find("driver").get("type") == "raw"  # type: ignore[union-attr]
    assert disk.find("readonly") is not None and disk.find("shareable") is not None
    label = disk.find("source/seclabel")
    assert label is not None and (label.get("model"), label.get("relabel")) == ("dac", "no")
    assert ET.fromstring(xml).find("os/kernel") is not None  # sandboxer's kernel boots it
