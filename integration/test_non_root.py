"""`non_root_user` holds for every process of a hardened sandbox, or is not claimed.

The attack: a main command that records who it runs as, and PID 1 read from inside. In a
container PID 1 shares the host's kernel, so it must not be root either; in a VM the guest
kernel is the boundary and PID 1 is sandboxer's own guest init, which the report names.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

import sandboxer
from sandboxer import Sandbox
from sandboxer._registry import get_backend
from sandboxer.backends.incus import IncusBackend, _images

PROFILE_UID = "1000"
# Backends whose PID 1 is a root-run guest init of sandboxer's own, behind its own kernel.
ROOT_GUEST_INIT = {"libvirt"}


def _uid_fields(status: bytes) -> list[str]:
    line = next(line for line in status.decode().splitlines() if line.startswith("Uid:"))
    return line.split()[1:]  # real, effective, saved, filesystem


def _wait_for_file(sandbox: Sandbox, path: str, seconds: float = 60) -> bytes:
    deadline = time.monotonic() + seconds
    while True:
        result = sandbox.exec(["cat", path])
        if result.exit_code == 0 and result.stdout:
            return result.stdout
        assert time.monotonic() < deadline, f"{path} never appeared: {result}"
        time.sleep(0.2)


@pytest.fixture(scope="class")
def attacked(backend: str) -> Iterator[Sandbox]:
    command = ["sh", "-c", "id -u > /tmp/id; sleep 1000"]
    with sandboxer.launch(backend=backend, profile="hardened", command=command) as sandbox:
        yield sandbox


class TestEveryProcessIsTheProfileUser:
    def test_the_claim_is_made(self, attacked: Sandbox) -> None:
        assert attacked.enforcement["non_root_user"].enforced

    def test_the_main_command_is_not_root(self, attacked: Sandbox) -> None:
        assert _wait_for_file(attacked, "/tmp/id").strip() == PROFILE_UID.encode()

    def test_pid_1_is_not_root(self, attacked: Sandbox, backend: str) -> None:
        uids = _uid_fields(attacked.exec(["cat", "/proc/1/status"]).stdout)
        if backend in ROOT_GUEST_INIT:
            assert uids[0] == "0"  # and the report says so:
            assert "guest init" in attacked.enforcement["non_root_user"].mechanism
        else:
            assert uids == [PROFILE_UID] * 4, uids

    def test_no_process_is_root_in_a_container(self, attacked: Sandbox, backend: str) -> None:
        script = "for s in /proc/[0-9]*/status; do echo $s $(grep '^Uid:' $s); done"
        listing = attacked.exec(["sh", "-c", script]).stdout.decode().splitlines()
        assert len(listing) >= 3, listing  # PID 1, the main command, this shell
        root = [line for line in listing if "0" in line.split()[2:]]
        if backend not in ROOT_GUEST_INIT:
            assert not root, root


@pytest.fixture
def own_init_image() -> Iterator[str]:
    engine = get_backend("incus")
    assert isinstance(engine, IncusBackend)
    name = f"sandboxer-test/own-init-{uuid.uuid4().hex[:8]}"
    image = engine._incus.client.images.create(_images.unified_tarball(), public=False, wait=True)
    image.add_alias(name, "sandboxer integration test: an image with its own init")
    try:
        yield name
    finally:
        image.delete(wait=True)


class TestAnImageWithItsOwnInit:
    """Incus: an image whose init is not sandboxer's keeps it root; the claim is withdrawn."""

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> str:
        return "incus"

    def test_refused_without_consent_reported_with_it(
        self, own_init_image: str, backend: str
    ) -> None:
        with pytest.raises(sandboxer.UnsupportedFeature, match="non_root_user"):
            sandboxer.launch(backend=backend, image=own_init_image)
        with sandboxer.launch(
            backend=backend, image=own_init_image, allow_unenforced=["non_root_user"]
        ) as sandbox:
            status = sandbox.enforcement["non_root_user"]
            assert not status.enforced and "own init" in status.mechanism
            # The report is honest: PID 1 is root; exec still runs as the profile's user.
            assert _uid_fields(sandbox.exec(["cat", "/proc/1/status"]).stdout)[0] == "0"
            assert sandbox.exec(["id", "-u"]).stdout.strip() == PROFILE_UID.encode()
