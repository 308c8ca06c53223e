"""A user's own cloud image on libvirt: the contract's shared-sandbox part unchanged,
every other spec field in one more sandbox, and what only a cloud image shows
(cloud-init ran, the image itself is never written).

The image is a Debian 12 cloud image built from Debian packages by
scripts/build-cloud-test-image.sh (cached; SANDBOXER_TEST_CLOUD_IMAGE moves it). It
boots with its own boot loader, systemd and cloud-init, about a minute under TCG: so
three boots here, where the whole EngineContract would take a dozen (it passes too:
`pytest -m slow`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest

import sandboxer
from sandboxer import Mount, PortMapping, Sandbox
from sandboxer.backends.libvirt._backend import state_dir, uri
from sandboxer.testing._contract_process import ProcessContract
from sandboxer.testing.contract import EngineContract, SharedSandboxContract, http_get

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


def _left_behind(name: str) -> list[str]:
    """What of sandbox `name` is still on the host: its domain, its directory."""
    connection = libvirt.open(uri())
    try:
        domains = [d.name() for d in connection.listAllDomains(0) if d.name() == name]
    finally:
        connection.close()
    directory = state_dir() / "run" / name
    return domains + ([str(directory)] if directory.exists() else [])


class OnCloudImage:
    """The contract's fixtures, pointed at libvirt and the cloud image."""

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> str:
        return "libvirt"

    @pytest.fixture(scope="class")
    @classmethod
    def image(cls, cloud_image: str) -> str:
        return cloud_image

    @pytest.fixture(scope="class")
    @classmethod
    def launch_fields(cls, image: str) -> dict[str, Any]:
        # The image's systemd runs as root: non_root_user cannot hold for every process.
        return {"image": image, "allow_unenforced": ["non_root_user"]}


@pytest.mark.slow
class TestWholeContractOnCloudImage(OnCloudImage, EngineContract):
    pass


class TestCloudImage(OnCloudImage, SharedSandboxContract):
    def test_cloud_init_set_the_guest_up(self, shared: Sandbox) -> None:
        status = shared.exec(["cloud-init", "status"], timeout=120)
        assert status.stdout.split() == [b"status:", b"done"], status
        assert shared.exec(["hostname"]).stdout.decode().strip() == shared.name
        assert shared.exec(["uname", "-r"]).stdout.decode().strip() != os.uname().release
        # Commands live in a PID namespace of their own: its PID 1 is sandboxer's agent
        # init, not systemd; and cloud-init took the seed without a schema complaint.
        assert b"sbx-agent-init" in shared.exec(["cat", "/proc/1/cmdline"]).stdout
        schema = shared.exec(["cloud-init", "schema", "--system"], user="0", timeout=120)
        assert schema.exit_code == 0, schema
        assert shared.exec(["id", "-un"]).stdout == b"sandbox\n"

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
        not_enforced = {c for c, status in shared.enforcement.items() if not status.enforced}
        assert not_enforced == {"non_root_user"}
        assert "systemd" in shared.enforcement["non_root_user"].mechanism
        assert "ProtectSystem=strict" in shared.enforcement["read_only_root"].mechanism

    def test_hardened_refuses_the_image_without_consent(self, image: str) -> None:
        with pytest.raises(sandboxer.UnsupportedFeature, match="non_root_user"):
            sandboxer.launch(backend="libvirt", image=image)


def test_the_users_image_is_never_written_and_nothing_is_left(cloud_image: str) -> None:
    before = _fingerprint(cloud_image)
    with sandboxer.launch(backend="libvirt", image=cloud_image, profile="default") as sb:
        assert sb.exec(["sh", "-c", "echo scribble > /root/scribble && sync"], user="0").ok
        assert _left_behind(sb.name)  # while it runs: the domain and its directory
    assert _left_behind(sb.name) == []
    assert _fingerprint(cloud_image) == before  # content, owner and mode as they were


def test_a_missing_disk_image_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    name = f"sbx-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(sandboxer.ImageNotFound, match="no disk image at"):
        sandboxer.launch(
            backend="libvirt",
            name=name,
            image=str(tmp_path / "missing.qcow2"),
            allow_unenforced=["non_root_user"],
        )
    assert _left_behind(name) == []


def test_mounts_ports_and_limits_in_one_sandbox(cloud_image: str, tmp_path: Path) -> None:
    """The contract's launch-per-test fields, all in one boot of the cloud image."""
    readonly, writable = tmp_path / "ro", tmp_path / "rw"
    readonly.mkdir()
    writable.mkdir()
    (readonly / "in.txt").write_text("from host")
    for path, mode in ((tmp_path, 0o755), (readonly, 0o755), (writable, 0o777)):
        path.chmod(mode)  # the hardened user is uid 1000
    with sandboxer.launch(
        backend="libvirt",
        image=cloud_image,
        network="isolated",
        mounts=[Mount(str(readonly), "/data/ro", read_only=True), Mount(str(writable), "/data/rw")],
        allow_unenforced=["non_root_user"],
        ports=[PortMapping(guest_port=8080)],
        resources={"cpus": 1, "memory": "256MiB", "pids": 32},
    ) as sb:
        assert sb.exec(["cat", "/data/ro/in.txt"]).stdout == b"from host"
        assert sb.exec(["sh", "-c", "echo x > /data/ro/new.txt"]).exit_code != 0
        assert sorted(os.listdir(readonly)) == ["in.txt"]
        assert sb.exec(["sh", "-c", "echo out > /data/rw/out.txt"]).exit_code == 0
        assert (writable / "out.txt").read_text() == "out\n"

        sb.exec(["mkdir", "-p", "/tmp/www"])
        sb.write_file("/tmp/www/index.html", b"hello from a cloud image")
        assert sb.exec(["httpd", "-p", "8080", "-h", "/tmp/www"]).exit_code == 0
        host_ip, host_port = sb.ports[8080]
        body = http_get(f"http://{host_ip}:{host_port}/index.html")
        assert body == b"hello from a cloud image"

        bomb = sb.exec(["sh", "-c", "for i in $(seq 80); do sleep 3 & done; wait"], timeout=60)
        assert b"fork" in bomb.stderr.lower() or b"resource" in bomb.stderr.lower(), bomb
        # The bomb's orphans are reaped (they would hold the pids limit as zombies).
        deadline = time.monotonic() + 60
        while (alive := sb.exec(["echo", "still here"], timeout=30)).stdout != b"still here\n":
            assert time.monotonic() < deadline, alive
            time.sleep(1)

        # python3 (cloud-init's) fills 600 MB at C speed; a shell pipeline crawls under TCG.
        hog = "data = b'a' * 600_000_000; print('survived', len(data))"
        eaten = sb.exec(["python3", "-c", hog], timeout=180)
        assert b"survived" not in eaten.stdout and eaten.exit_code != 0
        assert sb.exec(["cat", "/sys/fs/cgroup/sandbox/cpu.max"]).stdout == b"100000 100000\n"
        assert sb.exec(["echo", "still here"], timeout=30).stdout == b"still here\n"


def _processes_are_refused(self: TestCloudImage, shared: Sandbox) -> None:
    """A user's disk image has no command service (its qemu-ga cannot stream): spawn and
    pty are refused with the reason, before anything runs."""
    with pytest.raises(sandboxer.UnsupportedFeature, match="processes"):
        shared.spawn(["sleep", "600"])
    with pytest.raises(sandboxer.UnsupportedFeature, match="processes"):
        shared.pty()


# The contract's process tests, each replaced by the refusal this engine gives instead.
for _name in dir(ProcessContract):
    if _name.startswith("test_"):
        setattr(TestCloudImage, _name, _processes_are_refused)
