"""A user's own cloud image on libvirt: the same contract as the built-in images, plus
what only a cloud image shows (cloud-init ran, the image itself is never written).

The image is a Debian 12 cloud image built from Debian packages by
scripts/build-cloud-test-image.sh (cached; SANDBOXER_TEST_CLOUD_IMAGE moves it). It
boots with its own boot loader, systemd and cloud-init, under TCG here: about a minute.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import libvirt
import pytest

import sandboxer
from sandboxer import Sandbox
from sandboxer.backends.libvirt._backend import state_dir, uri
from sandboxer.testing.contract import EngineContract

ROOT = Path(__file__).resolve().parents[1]
CLOUD_IMAGE = os.environ.get(
    "SANDBOXER_TEST_CLOUD_IMAGE", "/var/lib/sandboxer/test-images/debian-12-cloud.qcow2"
)


@pytest.fixture(scope="session")
def cloud_image() -> str:
    """The test image, built on first use (idempotent: a stamp beside it says it is current)."""
    subprocess.run([str(ROOT / "scripts" / "build-cloud-test-image.sh"), CLOUD_IMAGE], check=True)
    return CLOUD_IMAGE


def _fingerprint(path: str) -> tuple[str, int, int, int, int]:
    digest = hashlib.sha256()
    with open(path, "rb") as image:
        while chunk := image.read(1 << 20):
            digest.update(chunk)
    info = os.stat(path)
    return digest.hexdigest(), info.st_uid, info.st_gid, info.st_mode, info.st_mtime_ns


def _run_dirs() -> set[str]:
    run = state_dir() / "run"
    return {entry.name for entry in run.iterdir()} if run.exists() else set()


class TestCloudImage(EngineContract):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> str:
        return "libvirt"

    @pytest.fixture(scope="class")
    @classmethod
    def image(cls, cloud_image: str) -> str:
        return cloud_image

    def test_cloud_init_set_the_guest_up(self, shared: Sandbox) -> None:
        status = shared.exec(["cloud-init", "status"], timeout=120)
        assert status.stdout.split() == [b"status:", b"done"], status
        assert shared.exec(["hostname"]).stdout.decode().strip() == shared.name
        assert shared.exec(["uname", "-r"]).stdout.decode().strip() != os.uname().release
        # Commands live in a PID namespace of their own: its PID 1 is the agent, not systemd.
        assert shared.exec(["cat", "/proc/1/comm"]).stdout == b"qemu-ga\n"

    def test_hardened_controls_seen_from_inside(self, shared: Sandbox) -> None:
        status = dict(
            line.split(":\t", 1)
            for line in shared.exec(["cat", "/proc/self/status"]).stdout.decode().splitlines()
        )
        assert status["CapEff"] == status["CapBnd"] == "0000000000000000"
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"
        assert shared.exec(["id", "-u"]).stdout == b"1000\n"
        refused = shared.exec(["sh", "-c", "echo x > /etc/sandboxer-probe"])
        assert refused.exit_code != 0 and b"Read-only" in refused.stderr
        assert shared.exec(["sh", "-c", "echo x > /tmp/ok && cat /tmp/ok"]).stdout == b"x\n"
        assert shared.exec(["unshare", "--user", "true"]).exit_code != 0
        cgroup = shared.exec(["cat", "/proc/self/cgroup"]).stdout.decode().strip()
        assert cgroup.startswith("0::/sandbox/exec-")
        assert shared.exec(["cat", "/sys/fs/cgroup/sandbox/pids.max"]).stdout.strip().isdigit()

    def test_enforcement_names_the_disk_image_mechanisms(self, shared: Sandbox) -> None:
        assert all(status.enforced for status in shared.enforcement.values())
        assert "ProtectSystem=strict" in shared.enforcement["read_only_root"].mechanism


def test_the_users_image_is_never_written_and_nothing_is_left(cloud_image: str) -> None:
    before, dirs = _fingerprint(cloud_image), _run_dirs()
    with sandboxer.launch(backend="libvirt", image=cloud_image, profile="default") as sb:
        assert sb.exec(["sh", "-c", "echo scribble > /root/scribble && sync"], user="0").ok
        name = sb.name
    connection = libvirt.open(uri())
    try:
        assert name not in {domain.name() for domain in connection.listAllDomains(0)}
    finally:
        connection.close()
    assert _run_dirs() == dirs
    assert _fingerprint(cloud_image) == before  # content, owner and mode as they were


def test_a_missing_disk_image_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    dirs = _run_dirs()
    with pytest.raises(sandboxer.ImageNotFound, match="no disk image at"):
        sandboxer.launch(backend="libvirt", image=str(tmp_path / "missing.qcow2"))
    assert _run_dirs() == dirs
