"""Ownership by identity, attacked as a careless caller would: an object that an engine's
own CLI made, under a name a launch then asks for, survives every failure path of that
launch, and the launch leaves nothing of its own behind. A mount source whose symlink is
swapped during a launch still mounts what was checked.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import sandboxer
from sandboxer import Mount, PortMapping
from sandboxer._gc import gc
from sandboxer._labels import LAUNCH, OWNER, OWNER_PID, owner_identity
from sandboxer._launch import make_plan
from sandboxer._registry import get_backend
from sandboxer.images import IMAGE_VERSION

_FOREIGN_DOMAIN = """<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>16</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


def _run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)
    return done.stdout


def _make_foreign(backend: str, name: str) -> None:
    """An object called `name` made with the engine's own CLI, not by sandboxer."""
    if backend == "docker":
        # Any local image will do; the built-in one is there once any launch made it.
        sandboxer.launch(backend="docker").destroy()
        _run("docker", "create", "--name", name, f"sandboxer/minimal:{IMAGE_VERSION}", "true")
    elif backend == "incus":
        _run("incus", "init", "--empty", name)
    else:
        _run(
            "virsh",
            "-c",
            "qemu:///system",
            "define",
            "/dev/stdin",
            stdin=_FOREIGN_DOMAIN.format(name=name),
        )


def _foreign_exists(backend: str, name: str) -> bool:
    if backend == "docker":
        argv = ["docker", "inspect", "--type", "container", name]
    elif backend == "incus":
        argv = ["incus", "info", name]
    else:
        argv = ["virsh", "-c", "qemu:///system", "dominfo", name]
    return subprocess.run(argv, capture_output=True).returncode == 0


def _remove_foreign(backend: str, name: str) -> None:
    if backend == "docker":
        argv = ["docker", "rm", "-f", name]
    elif backend == "incus":
        argv = ["incus", "delete", "--force", name]
    else:
        argv = ["virsh", "-c", "qemu:///system", "undefine", name]
    subprocess.run(argv, capture_output=True)


def _leftovers(backend: str) -> set[str]:
    """Everything of this process's launches an engine still holds, networks included."""
    pid = str(os.getpid())
    found = {
        f"sandbox {info.name}"
        for info in get_backend(backend).list_sandboxes()
        if info.labels.get(OWNER_PID) == pid
    }
    if backend == "docker":
        listing = _run("docker", "network", "ls", "-q", "--filter", f"label={OWNER_PID}={pid}")
        found |= {f"network {line}" for line in listing.split()}
    elif backend == "incus":
        networks = json.loads(_run("incus", "network", "list", "--format", "json"))
        found |= {
            f"network {n['name']}"
            for n in networks
            if (n.get("config") or {}).get(f"user.{OWNER_PID}") == pid
        }
    return found


@pytest.fixture
def foreign(backend: str) -> Iterator[str]:
    name = f"foreign-{uuid.uuid4().hex[:8]}"
    _make_foreign(backend, name)
    assert _foreign_exists(backend, name)
    yield name
    _remove_foreign(backend, name)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A host port something else already listens on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


class TestAForeignObjectSurvivesEveryFailedLaunch:
    def test_missing_image(self, backend: str, foreign: str) -> None:
        # Nothing listens on port 1: the pull fails at once, and never leaves loopback.
        with pytest.raises(sandboxer.ImagePullFailed):
            sandboxer.launch(
                name=foreign,
                image="127.0.0.1:1/sandboxer-test/no-such-image",
                backend=backend,
                allow_unenforced=["non_root_user"],
            )
        assert _foreign_exists(backend, foreign)
        assert _leftovers(backend) == set()

    def test_name_clash(self, backend: str, foreign: str) -> None:
        with pytest.raises(sandboxer.SandboxExists):
            sandboxer.launch(name=foreign, backend=backend)
        assert _foreign_exists(backend, foreign)
        assert _leftovers(backend) == set()

    def test_name_clash_with_a_private_network(self, backend: str, foreign: str) -> None:
        with pytest.raises(sandboxer.SandboxExists):
            sandboxer.launch(name=foreign, backend=backend, network="isolated")
        assert _foreign_exists(backend, foreign)
        assert _leftovers(backend) == set()

    def test_bad_port(self, backend: str, foreign: str, busy_port: int) -> None:
        with pytest.raises(sandboxer.SandboxError):
            sandboxer.launch(
                name=foreign,
                backend=backend,
                network="bridge",
                ports=[PortMapping(guest_port=80, host_port=busy_port)],
            )
        assert _foreign_exists(backend, foreign)
        assert _leftovers(backend) == set()

    def test_interrupted(self, backend: str, foreign: str, monkeypatch: pytest.MonkeyPatch) -> None:
        engine = get_backend(backend)

        def interrupted(plan: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(engine, "create", interrupted)
        with pytest.raises(KeyboardInterrupt):
            sandboxer.launch(name=foreign, backend=backend)
        monkeypatch.undo()
        assert _foreign_exists(backend, foreign)

    def test_engine_error_mid_create_removes_only_this_launch(
        self, backend: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        engine = get_backend(backend)
        real_create = engine.create

        def failing(plan: Any) -> object:
            real_create(plan)  # made on the engine, then the launch fails
            raise sandboxer.EngineError("failed after the engine made it")

        monkeypatch.setattr(engine, "create", failing)
        with pytest.raises(sandboxer.EngineError):
            sandboxer.launch(backend=backend, network="isolated")
        monkeypatch.undo()
        assert _leftovers(backend) == set()

    def test_destroy_removes_only_its_own_launch(self, backend: str) -> None:
        sandbox = sandboxer.launch(backend=backend)
        # Another launch's id for the same name (the name reused after ours went).
        get_backend(backend).remove(sandbox.name, uuid.uuid4().hex)
        assert sandbox.exec(["true"], timeout=60).exit_code == 0
        assert sandbox.labels[LAUNCH]
        sandbox.destroy()
        assert _leftovers(backend) == set()


def test_a_mount_source_swapped_during_the_launch_mounts_what_was_checked(
    backend: str, tmp_path: Path
) -> None:
    checked, other = tmp_path / "checked", tmp_path / "other"
    checked.mkdir()
    other.mkdir()
    (checked / "which").write_text("checked\n")
    (other / "which").write_text("other\n")
    link = tmp_path / "link"
    link.symlink_to(checked)
    spec = sandboxer.SandboxSpec(
        backend=backend, mounts=[Mount(str(link), "/data", read_only=True)]
    )
    # The caller's symlink now points elsewhere: the spec holds what it checked.
    link.unlink()
    link.symlink_to(other)
    with sandboxer.launch(spec) as sandbox:
        assert sandbox.exec(["cat", "/data/which"], timeout=60).stdout == b"checked\n"
    # The checked directory itself swapped for a symlink: refused before any engine call.
    checked.rename(tmp_path / "moved")
    checked.symlink_to(other)
    with pytest.raises(sandboxer.InvalidSpec, match=r"mounts\[0\]\.source"):
        sandboxer.launch(spec)
    assert _leftovers(backend) == set()


def _dead_owner() -> dict[str, str]:
    child = subprocess.Popen(["true"])
    child.wait()
    here = owner_identity(os.getpid())
    assert here is not None
    boot, namespace = here.split(":")[:2]
    return {OWNER_PID: str(child.pid), OWNER: f"{boot}:{namespace}:{child.pid}:0"}


def _remove_sandbox_only(backend: str, name: str) -> None:
    """The sandbox itself goes behind sandboxer's back (a crash), its network stays."""
    if backend == "docker":
        _run("docker", "rm", "-f", name)
    elif backend == "incus":
        _run("incus", "delete", "--force", name)
    else:
        _run("virsh", "-c", "qemu:///system", "destroy", name)


def test_gc_collects_what_a_gone_sandbox_left(backend: str) -> None:
    engine = get_backend(backend)
    plan = make_plan(sandboxer.SandboxSpec(backend=backend, network="isolated"))
    plan = attrs.evolve(plan, labels={**plan.labels, **_dead_owner()})
    engine.create(plan)
    _remove_sandbox_only(backend, plan.name)
    launch = plan.labels[LAUNCH]
    left = [i for i in engine.list_sandboxes() + engine.leftovers() if i.labels[LAUNCH] == launch]
    assert left, "nothing was left behind to collect"
    removed = gc(backends=[backend], labels={LAUNCH: launch})
    assert launch in {info.labels[LAUNCH] for info in removed}
    left = [i for i in engine.list_sandboxes() + engine.leftovers() if i.labels[LAUNCH] == launch]
    assert left == []


def test_a_source_swapped_in_a_loop_never_redirects_a_mount(backend: str, tmp_path: Path) -> None:
    """Another user swaps the checked directory with a symlink to elsewhere, over and over
    (renameat2 RENAME_EXCHANGE) while sandboxes launch: each launch mounts what was checked
    or is refused; none mounts the other directory."""
    checked, other = tmp_path / "checked", tmp_path / "other"
    checked.mkdir()
    other.mkdir()
    (checked / "which").write_text("checked\n")
    (other / "which").write_text("other\n")
    spec = sandboxer.SandboxSpec(backend=backend, mounts=[Mount(str(checked), "/data")])
    swapped = tmp_path / "swapped"
    swapped.symlink_to(other)
    libc = ctypes.CDLL(None, use_errno=True)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            libc.renameat2(-100, bytes(checked), -100, bytes(swapped), 2)  # RENAME_EXCHANGE
            time.sleep(0.0005)

    swapper = threading.Thread(target=swap)
    swapper.start()
    seen = []
    try:
        for _ in range(4 if backend == "libvirt" else 10):
            try:
                with sandboxer.launch(spec) as sandbox:
                    seen.append(sandbox.exec(["cat", "/data/which"], timeout=60).stdout)
            except sandboxer.InvalidSpec as refused:
                assert "mounts[0].source" in str(refused)
                seen.append(b"refused")
    finally:
        stop.set()
        swapper.join()
    assert b"other\n" not in seen, seen
    assert _leftovers(backend) == set()
