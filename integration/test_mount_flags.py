"""The sandbox side of a writable host mount: nosuid,nodev where the engine allows it.

Tried under the default profile, where no no-new-privileges stands in the way, so only the
mount's own flags decide: a setuid-root copy of the probe in the mount (one made by the
host, one by root inside) must not raise euid, and a device node the host left there
(a copy of /dev/null) must not open.

Docker's API takes neither option for a bind mount (the Mounts API has only propagation;
the local volume driver's `o=bind,nosuid` is dropped by the kernel for a writable bind):
there the table says so, and the hardened profile keeps setuid inert with
no-new-privileges and devices closed with the device cgroup instead.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandboxer
from sandboxer import Mount, Sandbox

PROBE_SOURCE = Path(__file__).parent / "helpers" / "probe.c"
# backend -> whether its writable host mounts are nosuid,nodev inside.
MARKED = {"docker": False, "incus": True, "libvirt": True}


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build the probe: apt-get install -y gcc libc6-dev"
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run([gcc, "-static", "-O2", "-o", str(out), str(PROBE_SOURCE)], check=True)
    return out.read_bytes()


@pytest.fixture(scope="class")
def shared(backend: str, tmp_path_factory: pytest.TempPathFactory, probe: bytes) -> Path:
    """A new directory for each backend: copies made by one sandbox's root stay out."""
    directory = tmp_path_factory.mktemp(f"writable-mount-{backend}")
    directory.chmod(0o777)
    host_copy = directory / "probe-suid-host"
    host_copy.write_bytes(probe)
    os.chown(host_copy, 0, 0)
    host_copy.chmod(0o4755)
    os.mknod(directory / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return directory


@pytest.fixture(scope="class")
def sandbox(backend: str, shared: Path, probe: bytes) -> Iterator[Sandbox]:
    mounts = [Mount(str(shared), "/shared")]
    with sandboxer.launch(
        backend=backend, profile="default", user="1000:1000", mounts=mounts
    ) as sandbox:
        sandbox.write_file("/shared/probe", probe, mode=0o755)
        copy = "cp /shared/probe /shared/probe-suid-inside"
        result = sandbox.exec(
            ["sh", "-c", f"{copy} && chmod 4755 /shared/probe-suid-inside"], user="0"
        )
        assert result.exit_code == 0, result
        yield sandbox


def _euids(sandbox: Sandbox) -> dict[str, str]:
    """euid of each setuid-root copy run as the sandbox user (copies whose owner the
    sandbox sees as root: a host-owned file is unmapped under a user namespace)."""
    listing = sandbox.exec(["sh", "-c", "stat -c '%u %a %n' /shared/probe-suid-*"])
    euids = {}
    for uid, mode, path in (line.split() for line in listing.stdout.decode().splitlines()):
        if uid == "0" and int(mode, 8) & 0o4000:
            result = sandbox.exec([path, "ids"])
            assert result.exit_code == 0, result
            euids[path] = dict(p.split("=") for p in result.stdout.decode().split())["euid"]
    assert euids, f"no setuid-root copy to try: {listing}"
    return euids


class TestWritableHostMount:
    def test_setuid_root_does_not_raise_euid(self, sandbox: Sandbox, backend: str) -> None:
        euids = _euids(sandbox)
        if MARKED[backend]:
            assert set(euids.values()) == {"1000"}, euids
        else:  # the engine cannot: the table's claim is checked both ways
            assert "0" in euids.values(), euids

    def test_a_device_node_does_not_open(self, sandbox: Sandbox, backend: str) -> None:
        result = sandbox.exec(["sh", "-c", "echo x > /shared/null"], user="0")
        if MARKED[backend]:
            assert result.exit_code != 0 and b"denied" in result.stderr, result
        else:
            assert result.exit_code == 0, result

    def test_the_mount_is_still_writable(self, sandbox: Sandbox, shared: Path) -> None:
        assert sandbox.exec(["sh", "-c", "echo data > /shared/written"]).exit_code == 0
        assert (shared / "written").read_text() == "data\n"
