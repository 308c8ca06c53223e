"""write_file and read_file on Incus go straight through the sandbox's root as its user
(backends/incus/_files.py), with no exec: the rules that way must keep.

What the user may not read or write stays refused; no symlink, `..` or magic link leads
the host thread out of the sandbox's view; no device is opened from the host; written
files are the user's; a restarted sandbox gets its new root. Runs on the real Incus
daemon (a missing daemon fails these tests, it never skips them).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sandboxer
from sandboxer import Sandbox
from sandboxer.backends.incus import IncusBackend, _files

BACKEND = "incus"


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with sandboxer.launch(backend=BACKEND) as sandbox:
        yield sandbox


@pytest.fixture
def execs(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The exec requests the backend gets meanwhile: none, on the direct way."""
    seen: list[Any] = []
    backend = sb._backend
    original = backend.exec

    def counted(handle: Any, request: Any) -> Any:
        seen.append(request)
        return original(handle, request)

    monkeypatch.setattr(backend, "exec", counted)
    return seen


def _root(sb: Sandbox, script: str, *args: str) -> None:
    assert sb.exec(["sh", "-c", script, "sh", *args], user="0").exit_code == 0


def test_a_file_moves_without_any_exec(sb: Sandbox, execs: list[Any]) -> None:
    data = os.urandom(1 << 20)
    sb.write_file("/tmp/direct.bin", data, mode=0o640)
    assert sb.read_file("/tmp/direct.bin") == data
    assert execs == []
    found = sb.stat("/tmp/direct.bin")
    assert (found.uid, found.mode) == (int(sb.exec(["id", "-u"]).stdout), 0o640)


def test_what_the_user_may_not_read_or_write_stays_refused(sb: Sandbox) -> None:
    private = f"/tmp/root-only-{uuid.uuid4().hex[:8]}"
    _root(sb, 'mkdir -m 700 "$1" && echo secret > "$1/secret"', private)
    _root(sb, 'echo locked > "$1.file" && chmod 600 "$1.file"', private)
    _root(sb, 'mkdir -m 755 "$1.dir" && echo kept > "$1.dir/kept"', private)
    for call in (
        lambda: sb.read_file(f"{private}/secret"),
        lambda: sb.read_file(f"{private}.file"),
        lambda: sb.write_file(f"{private}/planted", b"x"),
        lambda: sb.write_file(f"{private}.dir/kept", b"replaced"),  # not the user's dir
        lambda: sb.write_file(f"{private}.dir/new", b"x"),
    ):
        with pytest.raises(sandboxer.SandboxError, match="Permission denied"):
            call()
    still = sb.exec(["sh", "-c", f"cat {private}/secret {private}.dir/kept"], user="0")
    assert still.stdout == b"secret\nkept\n"
    assert sb.exec(["ls", f"{private}.dir"], user="0").stdout == b"kept\n"


def test_symlinks_and_dots_stay_inside_the_sandbox(sb: Sandbox, tmp_path: Path) -> None:
    host_name = f"sandboxer-escape-{uuid.uuid4().hex[:8]}"
    sb.exec(["ln", "-sfn", "/", "/tmp/up"])
    sb.exec(["ln", "-sfn", "../../../../../../tmp", "/tmp/dots"])
    sb.exec(["ln", "-sfn", "/proc/self/root", "/tmp/magic"])
    hostname = sb.exec(["cat", "/etc/hostname"]).stdout
    assert sb.read_file("/tmp/up/etc/hostname") == hostname
    assert sb.read_file("/tmp/magic/etc/hostname") == hostname  # the sandbox's own
    for path in (f"/tmp/up/tmp/{host_name}", f"/tmp/dots/{host_name}"):
        sb.write_file(path, b"inside")
        assert not Path("/tmp", host_name).exists()
        assert sb.exec(["cat", f"/tmp/{host_name}"]).stdout == b"inside"


def test_a_symlink_written_to_is_replaced_not_followed(sb: Sandbox) -> None:
    _root(sb, "echo root > /tmp/roots && chmod 644 /tmp/roots")
    sb.exec(["ln", "-sfn", "/tmp/roots", "/tmp/pointer"])
    sb.write_file("/tmp/pointer", b"mine")
    assert sb.exec(["cat", "/tmp/roots"]).stdout == b"root\n"
    assert sb.stat("/tmp/pointer").type is sandboxer.FileType.FILE


def test_no_device_or_fifo_is_opened_from_the_host(sb: Sandbox) -> None:
    sb.exec(["mkfifo", "/tmp/fifo"])
    for path in ("/dev/zero", "/tmp/fifo", "/tmp"):
        with pytest.raises(sandboxer.EngineError, match="not a regular file"):
            sb.read_file(path, timeout=10)


def test_max_size_still_caps_a_read(sb: Sandbox) -> None:
    sb.exec(["sh", "-c", "head -c 4096 /dev/zero > /tmp/four-k"])
    with pytest.raises(sandboxer.OutputTooLarge):
        sb.read_file("/tmp/four-k", max_size=4095)
    assert sb.read_file("/tmp/four-k", max_size=4096) == bytes(4096)


def test_a_missing_file_is_not_found(sb: Sandbox) -> None:
    with pytest.raises(sandboxer.SandboxFileNotFound):
        sb.read_file("/tmp/no-such-file")
    with pytest.raises(sandboxer.SandboxFileNotFound):
        sb.read_file("/tmp/no-such-dir/file")


def test_a_restarted_sandbox_gets_its_new_root() -> None:
    with sandboxer.launch(backend=BACKEND) as sandbox:
        sandbox.write_file("/tmp/before", b"x")  # opens the first init's root
        sandbox.stop()
        sandbox.start()
        sandbox.write_file("/tmp/after", b"after")  # the tmpfs is new: so is the root
        assert sandbox.exec(["cat", "/tmp/after"]).stdout == b"after"
        assert sandbox.read_file("/tmp/after") == b"after"


def test_proc_and_sys_files_go_the_tar_way(sb: Sandbox, execs: list[Any]) -> None:
    # Their contents answer by who asks, and the sandbox's LSM profile may hide some.
    for path in ("/proc/version", "/sys/kernel/uevent_seqnum"):
        before = len(execs)
        with contextlib.suppress(sandboxer.SandboxError):  # tar: "short read" of sysfs
            sb.read_file(path)
        assert len(execs) > before, path


def test_the_worker_thread_is_the_user_without_capabilities(sb: Sandbox) -> None:
    backend = sb._backend
    assert isinstance(backend, IncusBackend)
    root = backend._root(sb.name)
    assert root is not None
    status = _files.as_user(root, lambda: Path("/proc/thread-self/status").read_text(), 10)
    fields = dict(line.split(":", 1) for line in status.splitlines())
    assert fields["Uid"].split() == [str(root.uid)] * 4 and root.uid > 0
    assert fields["Gid"].split() == [str(root.gid)] * 4 and root.gid > 0
    assert fields["Groups"].strip() == ""
    for caps in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(fields[caps], 16) == 0, caps
    ours = Path("/proc/thread-self/status").read_text()
    assert "\nUid:\t0\t0\t0\t0\n" in ours  # the caller's own thread is untouched
