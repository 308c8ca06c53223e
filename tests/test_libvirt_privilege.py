"""libvirt: nothing the caller passes runs with privileges in the guest, and nothing the
caller names reaches other host files (pure or host-only: no libvirtd needed)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxer import InvalidSpec, Mount, SandboxSpec
from sandboxer._backend import ExecRequest
from sandboxer._launch import make_plan
from sandboxer.backends.libvirt import _backend, _disk, _exec, _guest_config, _shares
from sandboxer.backends.libvirt._cloud_guest import setup_script
from sandboxer.backends.libvirt._guest_scripts import CHANNELS, EXEC, init_script


def _request(argv: tuple[str, ...], env: dict[str, str]) -> ExecRequest:
    return ExecRequest(
        argv=argv, env=env, workdir="/tmp", user="1000:1000", stdin=None, timeout=None
    )


def test_the_callers_environment_is_data_for_the_wrapper_never_its_environment() -> None:
    request = _request(("true",), {"LD_PRELOAD": "/tmp/e.so", "PATH": "/tmp"})
    args = _exec.wrapper_args("id1", request)
    assert args[:7] == ["id1", "/tmp", "1000:1000", "", "", "", "--"]
    assert args[7:] == ["PATH=/tmp", "LD_PRELOAD=/tmp/e.so", "true"]
    assert _exec.WRAPPER_ENV == ("PATH=/usr/sbin:/usr/bin:/sbin:/bin",)


def test_a_command_env_would_read_as_a_variable_goes_through_a_shell() -> None:
    args = _exec.wrapper_args("id1", _request(("./a=b", "x"), {}))
    assert args[-6:] == ["/bin/sh", "-c", 'exec "$@"', "sh", "./a=b", "x"]


def test_the_wrapper_is_valid_shell_and_applies_the_environment_after_setpriv() -> None:
    subprocess.run(["sh", "-n"], input=EXEC.encode(), check=True)
    script = EXEC.splitlines()
    assert script[1] == "export PATH=/usr/sbin:/usr/bin:/sbin:/bin"
    assert script[2] == "unset IFS ENV BASH_ENV CDPATH"
    assert 'set -- -- /usr/bin/env -i "$@"' in script
    assert script[-1] == 'exec /usr/bin/setpriv "$@"'


def test_both_guests_close_the_host_channels_to_everyone_but_root() -> None:
    assert 'chmod 600 "/dev/${p##*/}"' in CHANNELS
    for script in (init_script(), setup_script()):
        assert CHANNELS.rstrip("\n") in script
        subprocess.run(["sh", "-n"], input=script.encode(), check=True)


@pytest.mark.parametrize(
    "target", ["/usr", "/usr/local/bin", "/etc", "/etc/sandboxer", "/lib64", "/lib/x", "/bin",
               "/sbin", "/run/sandboxer", "/run", "/var/lib/cloud", "/dev/virtio-ports", "/root"],
)  # fmt: skip
def test_mounts_over_the_guests_system_paths_are_refused(tmp_path: Path, target: str) -> None:
    plan = make_plan(SandboxSpec(backend="libvirt", mounts=[Mount(str(tmp_path), target)]))
    with pytest.raises(InvalidSpec) as refused:
        _guest_config.check_mount_targets(plan)
    assert refused.value.field == "Mount.target" and target in str(refused.value)


@pytest.mark.parametrize("target", ["/data", "/srv/app", "/home/sandbox/work", "/mnt", "/opt/x"])
def test_mounts_elsewhere_are_fine(tmp_path: Path, target: str) -> None:
    plan = make_plan(SandboxSpec(backend="libvirt", mounts=[Mount(str(tmp_path), target)]))
    _guest_config.check_mount_targets(plan)


class _Connection:
    def __init__(self, xml: str) -> None:
        self.xml = xml

    def getCapabilities(self) -> str:
        return self.xml


def test_qemus_group_comes_from_libvirts_dac_label() -> None:
    xml = (
        "<capabilities><host><secmodel><model>none</model></secmodel><secmodel>"
        "<model>dac</model><baselabel type='kvm'>+64055:+108</baselabel>"
        "<baselabel type='qemu'>+64055:+64055</baselabel></secmodel></host></capabilities>"
    )
    connection: Any = _Connection(xml)
    assert _shares.qemu_group(connection, "kvm") == 108
    assert _shares.qemu_group(connection, "qemu") == 64055
    assert _shares.qemu_users(connection) == {64055}
    without_dac: Any = _Connection("<capabilities><host/></capabilities>")
    assert _shares.qemu_group(without_dac, "qemu") is None


# the user's disk image -------------------------------------------------------------------
def _qcow2(path: Path, *options: str) -> str:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", *options, str(path), "1M"], check=True
    )
    return str(path)


def test_a_self_contained_qcow2_is_accepted(tmp_path: Path) -> None:
    assert _disk.user_disk(_qcow2(tmp_path / "ok.qcow2")).format == "qcow2"


def test_a_qcow2_with_a_backing_file_is_refused(tmp_path: Path) -> None:
    image = _qcow2(tmp_path / "b.qcow2", "-b", "/etc/hostname", "-F", "raw")
    with pytest.raises(InvalidSpec, match=r"a backing file \(/etc/hostname\)") as refused:
        _disk.user_disk(image)
    assert refused.value.field == "image" and "qemu-img convert" in str(refused.value)


def test_a_qcow2_with_an_external_data_file_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data.raw"
    image = _qcow2(tmp_path / "d.qcow2", "-o", f"data_file={data}")
    with pytest.raises(InvalidSpec, match=rf"an external data file \({data}\)"):
        _disk.user_disk(image)


def test_a_qcow2_whose_backing_file_is_gone_is_refused(tmp_path: Path) -> None:
    base = Path(_qcow2(tmp_path / "base.qcow2"))
    image = _qcow2(tmp_path / "top.qcow2", "-b", str(base), "-F", "qcow2")
    base.unlink()
    with pytest.raises(InvalidSpec, match="qemu-img cannot read"):
        _disk.user_disk(image)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")
@pytest.mark.parametrize("where", ["file", "directory", "owner"])
def test_an_image_others_could_swap_is_refused(tmp_path: Path, where: str) -> None:
    """A check on a path holds only while no one else can replace what it names."""
    folder = tmp_path / "images"
    folder.mkdir()
    image = Path(_qcow2(folder / "i.qcow2"))
    if where == "file":
        image.chmod(0o666)
    elif where == "directory":
        folder.chmod(0o777)
    else:
        os.chown(image, 65534, 65534)  # nobody may chmod it, then write it
    with pytest.raises(InvalidSpec, match="users other than root and you") as refused:
        _disk.user_disk(str(image))
    assert refused.value.field == "image"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")
def test_an_image_libvirt_handed_to_qemu_is_accepted_but_not_its_directory(
    tmp_path: Path,
) -> None:
    """libvirt chowns a boot's backing image to QEMU's user and leaves it so."""
    folder = tmp_path / "images"
    folder.mkdir()
    image = Path(_qcow2(folder / "i.qcow2"))
    os.chown(image, 64055, 64055)
    assert _disk.user_disk(str(image), frozenset({64055})).path == image
    os.chown(folder, 64055, 64055)
    with pytest.raises(InvalidSpec, match="users other than root and you"):
        _disk.user_disk(str(image), frozenset({64055}))


def test_an_image_under_a_sticky_directory_is_accepted(tmp_path: Path) -> None:
    """/tmp's way: others may add files there, but not replace ours."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert _disk.user_disk(_qcow2(shared / "ok.qcow2")).path == shared / "ok.qcow2"


def test_a_symlinked_image_is_checked_and_used_where_it_leads(tmp_path: Path) -> None:
    image = Path(_qcow2(tmp_path / "real.qcow2"))
    (tmp_path / "link.qcow2").symlink_to(image)
    assert _disk.user_disk(str(tmp_path / "link.qcow2")).path == image


# the sandbox's directory -----------------------------------------------------------------
@pytest.mark.parametrize(("qemu_gid", "mode"), [(4242, 0o710), (None, 0o700)])
def test_sandbox_files_are_for_qemus_group_alone(
    tmp_path: Path, qemu_gid: int | None, mode: int
) -> None:
    if qemu_gid is not None and os.geteuid() != 0:
        pytest.skip("needs root to hand a file to another group")
    _shares.close_to_others(tmp_path, qemu_gid, 0o710)
    info = tmp_path.stat()
    assert stat.S_IMODE(info.st_mode) == mode
    assert info.st_gid == (qemu_gid if qemu_gid is not None else os.getegid())


# what the guest reports ------------------------------------------------------------------
class _EndlessAgent:
    """A guest whose failure reason is /dev/zero."""

    def __init__(self) -> None:
        self.closed = False

    def read_chunks(self, path: str) -> Iterator[bytes]:
        try:
            while True:
                yield b"\0" * 1536 * 1024
        finally:
            self.closed = True


def test_the_guests_failure_reason_is_read_to_a_cap() -> None:
    agent: Any = _EndlessAgent()
    assert _backend._read_head(agent, "/failed", 64 * 1024) == b"\0" * 64 * 1024
    assert agent.closed
