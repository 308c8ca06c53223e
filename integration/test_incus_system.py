"""Incus system sandboxes, checked from inside: a real init, its services, loopback, stop,
the user namespace, seccomp, read-only mounts, exec's deadline, and the image import;
OCI images converted once, and sandboxer/systemd without an init (systemd as PID 1 is
in test_systemd.py, shared with libvirt).

Runs on the real Incus daemon (a missing daemon fails these tests, it never skips them).
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sandboxer
from sandboxer import Mount, Requirements, Sandbox, SandboxState
from sandboxer._labels import LAUNCH
from sandboxer._launch import make_plan
from sandboxer._registry import get_backend
from sandboxer.backends.incus import IncusBackend, _images
from sandboxer.images import ImageConfig
from sandboxer.images.helper import helper_dir
from sandboxer.images.store import LocalImage

BACKEND = "incus"
# An init that ignores every polite request: only a forced stop ends it.
STUBBORN_INIT = b"#!/bin/sh\ntrap '' PWR TERM INT\nwhile :; do sleep 1; done\n"


def _backend() -> IncusBackend:
    backend = get_backend(BACKEND)
    assert isinstance(backend, IncusBackend)
    return backend


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A hardened system sandbox whose main service records the signals it gets."""
    shared = tmp_path_factory.mktemp("incus-system")
    shared.chmod(0o777)
    service = (
        "trap 'echo TERM > /shared/service-stopped; exit 0' TERM; "
        "echo service-up; while :; do sleep 1 & wait; done"
    )
    with sandboxer.launch(
        backend=BACKEND,
        requirements=Requirements(init=True),
        command=["sh", "-c", service],
        mounts=[Mount(str(shared), "/shared")],
    ) as sandbox:
        yield sandbox


def _wait_for(predicate: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


# init and services -------------------------------------------------------------------
def test_pid_1_is_the_init(system: Sandbox) -> None:
    cmdline = system.exec(["cat", "/proc/1/cmdline"]).stdout.split(b"\0")
    assert cmdline[:2] == [b"/bin/sh", b"/sbin/init"]


def test_a_service_started_by_the_init_keeps_running(system: Sandbox) -> None:
    def parents() -> dict[str, str]:
        script = "for p in /proc/[0-9]*; do echo ${p#/proc/} $(cut -d' ' -f4 $p/stat); done"
        lines = system.exec(["sh", "-c", script], user="0").stdout.decode().splitlines()
        return dict(line.split() for line in lines if len(line.split()) == 2)

    def service_pid() -> str | None:
        for pid, parent in parents().items():
            argv = system.exec(["cat", f"/proc/{pid}/cmdline"], user="0").stdout
            if parent == "1" and b"service-up" in argv:
                return pid
        return None

    _wait_for(lambda: service_pid() is not None)
    first = service_pid()
    time.sleep(2)
    assert service_pid() == first, "the service did not stay up under the init"
    _wait_for(lambda: "service-up" in system.logs())


def test_loopback_is_up_without_any_capability(system: Sandbox) -> None:
    link = system.exec(["ip", "link", "show", "lo"]).stdout
    assert b"UP" in link.split(b">")[0], link
    status = system.exec(["grep", "CapBnd", "/proc/1/status"]).stdout
    assert status.split()[1] == b"0000000000000000"  # not even the init holds one
    fetch = "printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 3 127.0.0.1 8099"
    assert system.exec(["httpd", "-p", "127.0.0.1:8099", "-h", "/etc"]).exit_code == 0
    assert b"200 OK" in system.exec(["sh", "-c", fetch], timeout=30).stdout


def test_uid_map_leaves_host_root_out(system: Sandbox) -> None:
    numbers = [int(n) for n in system.exec(["cat", "/proc/self/uid_map"]).stdout.split()]
    ranges = [numbers[i : i + 3] for i in range(0, len(numbers), 3)]
    assert ranges
    assert not any(outside <= 0 < outside + count for _, outside, count in ranges), ranges


def test_seccomp_filters_and_a_denied_syscall_fails(system: Sandbox) -> None:
    status = system.exec(["grep", "Seccomp:", "/proc/self/status"]).stdout.split()
    assert status[1] == b"2"
    unshare = system.exec(["unshare", "-U", "true"], user="0")
    assert unshare.exit_code != 0 and b"Operation not permitted" in unshare.stderr
    mount = system.exec(["mount", "-t", "tmpfs", "none", "/mnt"], user="0")
    assert mount.exit_code != 0


def test_read_only_mount_refuses_writes(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)  # even a directory anyone may write into stays read-only
    (tmp_path / "data.txt").write_text("host")
    with sandboxer.launch(
        backend=BACKEND, mounts=[Mount(str(tmp_path), "/data", read_only=True)]
    ) as sandbox:
        assert sandbox.exec(["cat", "/data/data.txt"]).stdout == b"host"
        for who in (None, "0"):
            result = sandbox.exec(["sh", "-c", "echo x > /data/new"], user=who)
            assert result.exit_code != 0 and b"Read-only" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


def test_timeout_kills_the_whole_process_tree(system: Sandbox) -> None:
    result = system.exec(["sh", "-c", "sleep 300 & sleep 301"], timeout=1)
    assert result.timed_out
    leftovers = system.exec(["sh", "-c", "ps -o args | grep -c '^sleep 30[01]'"])
    assert leftovers.stdout.strip() == b"0", "a child of the timed-out command survived"


def test_a_missing_workdir_is_refused_not_ignored(system: Sandbox) -> None:
    # LXC itself would run the command in / instead.
    with pytest.raises(sandboxer.EngineError, match="workdir"):
        system.exec(["pwd"], workdir="/no/such/dir")
    assert system.exec(["pwd"], workdir="/tmp").stdout == b"/tmp\n"


def test_exec_round_trip_is_fast(system: Sandbox) -> None:
    durations = []
    for _ in range(15):
        started = time.perf_counter()
        assert system.exec(["true"]).exit_code == 0
        durations.append(time.perf_counter() - started)
    assert sorted(durations)[len(durations) // 2] < 0.1  # pylxd's execute() needs >= 0.1 s


# stop ----------------------------------------------------------------------------------
def test_stop_is_graceful_within_the_bound(system: Sandbox, tmp_path: Path) -> None:
    # Last in this module's use of `system`: it stops it.
    shared = Path(next(m.source for m in system.spec.mounts if m.target == "/shared"))
    started = time.monotonic()
    system.stop(timeout=10)
    assert time.monotonic() - started < 8
    assert system.state is SandboxState.STOPPED
    assert (shared / "service-stopped").read_text() == "TERM\n"  # the init told its service


@pytest.fixture
def stubborn_image() -> Iterator[str]:
    name = f"sandboxer-test/stubborn-{uuid.uuid4().hex[:8]}"
    client = _backend()._incus.client
    image = client.images.create(
        _images.unified_tarball({"sbin/init": STUBBORN_INIT}), public=False, wait=True
    )
    image.add_alias(name, "sandboxer integration test: an init that ignores SIGPWR")
    try:
        yield name
    finally:
        image.delete(wait=True)


def test_stop_is_forced_after_the_bound(stubborn_image: str) -> None:
    # Hardened, except that the image's own init stays root: consented to, as it must be.
    with sandboxer.launch(
        backend=BACKEND, image=stubborn_image, allow_unenforced=["non_root_user"]
    ) as sandbox:
        started = time.monotonic()
        sandbox.stop(timeout=2)
        took = time.monotonic() - started
        assert sandbox.state is SandboxState.STOPPED
    assert 2 <= took < 10, f"stop took {took:.1f}s"


# images ------------------------------------------------------------------------------
def test_concurrent_first_launches_import_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A revision nobody has imported: every launch below is a "first" one.
    monkeypatch.setattr(_images, "INCUS_REVISION", f"test{uuid.uuid4().hex[:8]}")
    backend = IncusBackend()  # a fresh process-like state: nothing cached
    imports: list[str] = []
    original = backend._images._import

    def counting() -> str:
        imports.append(threading.current_thread().name)
        return original()

    monkeypatch.setattr(backend._images, "_import", counting)
    plans = [make_plan(sandboxer.SandboxSpec(backend=BACKEND)) for _ in range(20)]
    errors: list[BaseException] = []

    def launch(plan: Any) -> None:
        try:
            backend.create(plan)
        except BaseException as exc:
            errors.append(exc)
        finally:
            backend.remove(plan.name, plan.labels[LAUNCH])

    threads = [threading.Thread(target=launch, args=(plan,)) for plan in plans]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not errors, errors
        assert len(imports) == 1
        fingerprints = {backend._images.fingerprint(i) for i in _images.BUILTIN_IMAGES}
        assert len(fingerprints) == 1
    finally:
        client = backend._incus.client
        for image in client.images.all():
            if any(a["name"].endswith(f".{_images.INCUS_REVISION}") for a in image.aliases):
                image.delete(wait=True)
        backend.close()


# OCI images and systemd ----------------------------------------------------------------
DEBIAN = "sandboxer/debian"
SYSTEMD = "sandboxer/systemd"


def test_without_an_init_requirement_the_systemd_image_runs_sandboxer_init() -> None:
    with sandboxer.launch(backend=BACKEND, image=SYSTEMD) as sandbox:
        assert sandbox.exec(["cat", "/proc/1/cmdline"]).stdout.split(b"\0")[:2] == [
            b"/.sandboxer/busybox",
            b"sh",
        ]
        assert sandbox.enforcement["non_root_user"].enforced
        uids = sandbox.exec(["sh", "-c", "grep ^Uid: /proc/1/status"]).stdout.split()
        assert uids[1:] == [b"1000"] * 4  # PID 1 itself runs as the profile's user


@pytest.mark.parametrize("profile", ["hardened", "default"])
def test_debian_runs_python(profile: str) -> None:
    with sandboxer.launch(backend=BACKEND, image=DEBIAN, profile=profile) as sandbox:
        result = sandbox.exec(["python3", "-c", "print(1)"])
        assert (result.exit_code, result.stdout) == (0, b"1\n"), result
        # The helper is there, read-only, whatever the profile.
        assert sandbox.exec(["touch", "/.sandboxer/x"], user="0").exit_code != 0


def test_a_second_launch_converts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    with sandboxer.launch(backend=BACKEND, image=DEBIAN):
        pass  # converted here if no earlier test did
    backend = IncusBackend()  # a fresh process-like state: nothing cached
    imports: list[str] = []
    monkeypatch.setattr(backend._images.converter, "_import", lambda *a: imports.append("x"))
    try:
        plan = make_plan(sandboxer.SandboxSpec(backend=BACKEND, image=DEBIAN))
        try:
            backend.create(plan)
        finally:
            backend.remove(plan.name, plan.labels[LAUNCH])
        assert imports == []
    finally:
        backend.close()


def _tiny_image(tmp_path: Path) -> LocalImage:
    """A store-like image no one else converts: a static busybox tree, a random digest."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    shutil.copy(helper_dir() / "busybox", rootfs / "bin/busybox")
    (rootfs / "bin/sh").symlink_to("busybox")
    digest = "sha256:" + uuid.uuid4().hex * 2
    return LocalImage(
        reference="sandboxer-test/tiny:1",
        digest=digest,
        config=ImageConfig(),
        rootfs=rootfs,
        size=0,
        layout=tmp_path / "layout",
        layout_tag="1",
    )


def test_concurrent_first_conversions_import_once_and_can_be_removed(tmp_path: Path) -> None:
    image = _tiny_image(tmp_path)
    backend = IncusBackend()
    converter = backend._images.converter
    imports: list[str] = []
    original = converter._import

    def counting(*arguments: Any) -> str:
        imports.append(threading.current_thread().name)
        return original(*arguments)

    converter._import = counting  # type: ignore[method-assign]
    found: list[str] = []
    threads = [
        threading.Thread(target=lambda: found.append(converter.fingerprint(image)))
        for _ in range(8)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(imports) == 1 and len(set(found)) == 1 and len(found) == 8
        assert image.digest in backend.converted()
    finally:
        assert backend.remove_converted(image.digest)
        assert image.digest not in backend.converted()
        assert not backend.remove_converted(image.digest)  # nothing left to remove
        backend.close()
