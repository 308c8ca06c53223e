"""Nothing the caller passes runs with privileges, proven from inside (issue 13, item 1).

The caller's environment is tried against every root-run step a sandbox has: LD_PRELOAD
and LD_LIBRARY_PATH (the dynamic loader of libvirt's root-run setpriv), PATH (every
program a root step looks up), IFS, ENV and BASH_ENV (the shells). Each hook records the
uid and euid it ran with; only the sandbox user may show up, and each attack has a control
that proves its hook works. The loader attacks need a dynamic loader in the image: of the
built-in images only the VM guest has one (for setpriv, qemu-ga, bwrap, env), so they
run on libvirt; the others run on every backend. Also here, libvirt only: which processes
run as root, mounts over the guest's system paths, the agent's channel, writable mounts,
the share staging directory and user disk images that reach other host files.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

import sandboxer
from sandboxer import InvalidSpec, Mount, Sandbox
from sandboxer.backends.libvirt._backend import state_dir, uri

USER = "1000 1000"  # uid euid of the hardened profile's user
# A shared library whose constructor appends "uid euid" to /tmp/hook-PID.
HOOK_LIBRARY = r"""
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void record(void) {
    char path[64], line[64];
    snprintf(path, sizeof path, "/tmp/hook-%d", (int)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0666);
    int n = snprintf(line, sizeof line, "%d %d\n", (int)getuid(), (int)geteuid());
    if (fd >= 0 && n > 0 && write(fd, line, (size_t)n) < 0) {}
}
"""
# A shell hook: the same record from a script a shell or a PATH lookup would run.
HOOK_SCRIPT = '#!/bin/sh\necho "$(/usr/bin/id -ru) $(/usr/bin/id -u)" >> /tmp/hook-$$\n'
# Names the root-run steps of the exec wrappers use, planted first in the caller's PATH.
ROOT_STEP_NAMES = ("env", "setpriv", "id", "mkdir", "rmdir", "rm", "cat", "sh", "tar")


def _shared_library(directory: Path, name: str, source: str) -> bytes:
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build the hook library: apt-get install -y gcc libc6-dev"
    (directory / f"{name}.c").write_text(source)
    out = directory / name
    build = [gcc, "-shared", "-fPIC", f"-Wl,-soname,{name}", "-o", str(out), f"{out}.c"]
    subprocess.run(build, check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def hook_library(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _shared_library(tmp_path_factory.mktemp("hook"), "hook.so", HOOK_LIBRARY)


@pytest.fixture(scope="module")
def fake_libcap_ng(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The hook as the libcap-ng setpriv needs, with a stub for each function it calls
    (setpriv binds every symbol at start, before any constructor runs)."""
    imported = subprocess.run(
        ["nm", "-D", "--undefined-only", "/usr/bin/setpriv"], capture_output=True, text=True
    ).stdout.split()
    stubs = "".join(
        f"int {name}(void) {{ return 0; }}\n" for name in imported if name.startswith("capng_")
    )
    assert stubs, "setpriv calls no libcap-ng function"
    directory = tmp_path_factory.mktemp("libcap-ng")
    return _shared_library(directory, "libcap-ng.so.0", HOOK_LIBRARY + stubs)


@pytest.fixture(scope="class")
def hardened(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    # The hooks live in a writable mount: /tmp may be noexec.
    hooks = tmp_path_factory.mktemp(f"hooks-{backend}")
    # Made here, open to all: a directory the guest makes in a VM's share is QEMU's user's.
    for directory in (hooks, hooks / "bin", hooks / "lib"):
        directory.mkdir(exist_ok=True)
        directory.chmod(0o777)
    mounts = [Mount(str(hooks), "/hook")]
    with sandboxer.launch(backend=backend, profile="hardened", mounts=mounts) as sandbox:
        sandbox.write_file("/hook/hook.sh", HOOK_SCRIPT.encode(), mode=0o755)
        yield sandbox


def _records(sandbox: Sandbox) -> list[str]:
    """Every hook record so far, then none: each test starts clean."""
    script = "cat /tmp/hook-* 2>/dev/null; rm -f /tmp/hook-*"
    return sandbox.exec(["sh", "-c", script], user="0").stdout.decode().splitlines()


class TestCallerEnvironment:
    def test_path_reaches_the_command_only(self, hardened: Sandbox) -> None:
        plant = " && ".join(f"cp /hook/hook.sh /hook/bin/{name}" for name in ROOT_STEP_NAMES)
        assert hardened.exec(["sh", "-c", plant]).exit_code == 0
        _records(hardened)
        env = {"PATH": "/hook/bin:/usr/bin:/bin"}
        assert hardened.exec(["true"], env=env, workdir="/tmp").exit_code == 0
        assert _records(hardened) == []
        # The control: the caller's PATH does reach the command, as the user.
        assert hardened.exec(["id"], env=env).exit_code == 0
        assert _records(hardened) == [USER]

    def test_ifs_neither_breaks_nor_escapes_the_drop(self, hardened: Sandbox) -> None:
        env = {"IFS": "/"}
        assert hardened.exec(["id", "-u"], env=env, workdir="/").stdout == b"1000\n"
        assert b"\nIFS=/\n" in b"\n" + hardened.exec(["env"], env=env).stdout  # reached it

    def test_env_and_bash_env_run_only_in_the_users_interactive_shell(
        self, hardened: Sandbox
    ) -> None:
        _records(hardened)
        env = {"ENV": "/hook/hook.sh", "BASH_ENV": "/hook/hook.sh"}
        assert hardened.exec(["sh", "-c", "true"], env=env, workdir="/tmp").exit_code == 0
        assert _records(hardened) == []
        # The control: an interactive shell reads ENV, as the user.
        assert hardened.exec(["sh", "-i", "-c", "true"], env=env).exit_code == 0
        assert _records(hardened) == [USER]


class TestLoaderEnvironment:
    """The issue's attack: LD_PRELOAD reached libvirt's root-run, dynamically linked setpriv."""

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> str:
        return "libvirt"

    def test_ld_preload_runs_only_as_the_user(self, hardened: Sandbox, hook_library: bytes) -> None:
        hardened.write_file("/hook/hook.so", hook_library)
        _records(hardened)
        env = {"LD_PRELOAD": "/hook/hook.so"}
        options: list[dict[str, Any]] = [{}, {"workdir": "/tmp"}, {"stdin": b"x" * 200_000}]
        for extra in options:  # each way the wrapper starts a command
            assert hardened.exec(["true"], env=env, **extra).exit_code == 0
        assert _records(hardened) == []
        # The control: a dynamically linked command loads it, as the user.
        assert hardened.exec(["/usr/bin/setpriv", "--dump"], env=env).exit_code == 0
        assert _records(hardened) == [USER]

    def test_ld_library_path_runs_only_as_the_user(
        self, hardened: Sandbox, fake_libcap_ng: bytes
    ) -> None:
        # setpriv needs libcap-ng: a library of that name first in the search path.
        hardened.write_file("/hook/lib/libcap-ng.so.0", fake_libcap_ng)
        _records(hardened)
        env = {"LD_LIBRARY_PATH": "/hook/lib"}
        assert hardened.exec(["true"], env=env).exit_code == 0
        assert _records(hardened) == []
        hardened.exec(["/usr/bin/setpriv", "--dump"], env=env)  # with stubs for libcap-ng
        assert _records(hardened) == [USER]


# libvirt only ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open(uri())
    yield connection
    connection.close()


def _domains(conn: libvirt.virConnect) -> set[str]:
    return {domain.name() for domain in conn.listAllDomains(0)}


@pytest.mark.parametrize("target", ["/usr/local/bin", "/sbin", "/etc/sandboxer", "/lib64"])
def test_mounts_over_the_guests_system_paths_are_refused(
    conn: libvirt.virConnect, tmp_path: Path, target: str
) -> None:
    before = _domains(conn)
    with pytest.raises(InvalidSpec) as refused:
        sandboxer.launch(backend="libvirt", mounts=[Mount(str(tmp_path), target)])
    assert refused.value.field == "Mount.target", refused.value
    assert not _domains(conn) - before  # nothing made (others' sandboxes may come and go)


class TestGuestBoundary:
    @pytest.fixture(scope="class")
    @classmethod
    def shared(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        # Behind a private parent, as pytest's own base directory is.
        parent = tmp_path_factory.mktemp("private")
        parent.chmod(0o700)
        source = parent / "rw"
        source.mkdir(mode=0o777)
        source.chmod(0o777)
        (source / "secret").write_text("host data")
        return source

    @pytest.fixture(scope="class")
    @classmethod
    def vm(cls, shared: Path) -> Iterator[Sandbox]:
        mounts = [Mount(str(shared), "/data")]
        with sandboxer.launch(
            backend="libvirt", profile="hardened", mounts=mounts, command=["sleep", "600"]
        ) as sandbox:
            yield sandbox

    def test_only_sandboxers_own_guest_steps_run_as_root(self, vm: Sandbox) -> None:
        # Everything the commands can see (their PID namespace; the guest's init is
        # outside it), listed by the sandbox user: status files are world-readable.
        script = (
            "for s in /proc/[0-9]*/status; do "
            "awk '/^Name:/ { n = $2 } /^Uid:/ { print n, $2, $3 }' $s; done 2>/dev/null"
        )
        deadline = time.monotonic() + 60
        while True:  # the spec's command starts in the background at launch
            listing = vm.exec(["sh", "-c", script]).stdout.decode().split("\n")
            processes = {tuple(line.split()) for line in listing if line}
            if ("sleep", "1000", "1000") in processes or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ("sleep", "1000", "1000") in processes, processes  # the spec's command
        root = {name for name, uid, euid in processes if "0" in (uid, euid)}
        assert root <= {"bwrap", "sbx-service", "qemu-ga"}, processes

    def test_the_agents_channel_is_closed_to_the_sandbox_user(self, vm: Sandbox) -> None:
        script = (
            "for d in /dev/vport*; do stat -c '%u %a %n' $d; "
            "{ : <> $d; } 2>/dev/null && echo opened $d; done"
        )
        lines = vm.exec(["sh", "-c", script]).stdout.decode().splitlines()
        assert lines, "no virtio port in the guest"
        assert all(line.startswith("0 600 /dev/vport") for line in lines), lines

    def test_a_writable_mount_is_nosuid_nodev_in_the_guest(self, vm: Sandbox) -> None:
        mounts = vm.exec(["cat", "/proc/mounts"]).stdout.decode().splitlines()
        options = next(line.split()[3].split(",") for line in mounts if line.split()[1] == "/data")
        assert {"rw", "nosuid", "nodev"} <= set(options), options
        assert vm.exec(["cat", "/data/secret"]).stdout == b"host data"

    def test_the_share_staging_directory_is_closed_to_local_users(self, vm: Sandbox) -> None:
        staging = state_dir() / "run" / vm.name / "shares"
        info = staging.stat()
        assert stat.S_IMODE(info.st_mode) == 0o710 and info.st_uid == 0, oct(info.st_mode)
        assert info.st_gid != 0  # QEMU's group
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        peek = subprocess.run([*nobody, "cat", str(staging / "sbx0" / "secret")], check=False)
        assert peek.returncode != 0

    def test_the_sandbox_directory_is_closed_to_local_users(self, vm: Sandbox) -> None:
        """The guest's initrd (its config), and a disk image's overlay and seed, live there."""
        run = state_dir() / "run" / vm.name
        info = run.stat()
        assert stat.S_IMODE(info.st_mode) == 0o710 and info.st_uid == 0, oct(info.st_mode)
        assert info.st_gid != 0  # QEMU's group
        initrd = run / "initrd.img"
        assert not stat.S_IMODE(initrd.stat().st_mode) & 0o137, oct(initrd.stat().st_mode)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        for argv in (["ls", str(run)], ["cat", str(initrd)], ["cat", str(run / "console.log")]):
            peek = subprocess.run([*nobody, *argv], capture_output=True, check=False)
            assert peek.returncode != 0 and not peek.stdout, argv


def test_a_disk_image_with_a_backing_file_or_a_data_file_is_refused(
    conn: libvirt.virConnect, tmp_path: Path
) -> None:
    backing = tmp_path / "backing.qcow2"
    data = tmp_path / "data.qcow2"
    qemu_img = ["qemu-img", "create", "-q", "-f", "qcow2"]
    subprocess.run([*qemu_img, "-b", "/etc/shadow", "-F", "raw", str(backing), "1M"], check=True)
    subprocess.run(
        [*qemu_img, "-o", f"data_file={tmp_path / 'x.raw'}", str(data), "1M"], check=True
    )
    before, runs = _domains(conn), set(os.listdir(state_dir() / "run"))
    for image, reason in ((backing, "a backing file"), (data, "an external data file")):
        with pytest.raises(InvalidSpec, match=reason) as refused:
            # The image's own init runs as root: consent, so the image check is reached.
            sandboxer.launch(
                backend="libvirt", image=str(image), allow_unenforced=["non_root_user"]
            )
        assert refused.value.field == "image"
    assert not _domains(conn) - before  # nothing made (others' sandboxes may come and go)
    # A new run directory is only another launch's, whose domain is there.
    new_runs = set(os.listdir(state_dir() / "run")) - runs
    assert new_runs <= {domain.name() for domain in conn.listAllDomains()}, new_runs
