"""Attacks on this session's surfaces on real engines: a hostile sandbox's processes,
terminals and file calls, and a careless caller of them. Each tries the forbidden thing
and shows it fails (or that the boundary holds where the test passes)."""

from __future__ import annotations

import signal
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

import sandboxer

PATIENCE = 120.0
# One byte per write, alternating stdout and stderr: the engines pass each on alone.
_WRITES = 20_000
_BYTE_BY_BYTE = f"i=0; while [ $i -lt {_WRITES} ]; do printf x; printf y >&2; i=$((i+1)); done"


@pytest.fixture(scope="class")
def sb(backend: str) -> Iterator[sandboxer.Sandbox]:
    with sandboxer.launch(backend=backend) as sandbox:
        yield sandbox


class TestHostileProcesses:
    def test_byte_by_byte_output_costs_the_host_about_its_size(self, sb: sandboxer.Sandbox) -> None:
        """A process's output cap bounds the host memory it takes, however the sandbox
        slices it (one frame per byte cost ~100 bytes each before)."""
        tracemalloc.start()
        try:
            proc = sb.spawn(["sh", "-c", _BYTE_BY_BYTE], timeout=PATIENCE)
            result = proc.wait(timeout=PATIENCE)
            kept = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert (result.stdout, result.stderr) == (b"x" * _WRITES, b"y" * _WRITES)
        chunks = list(proc)
        print(f"{sb.backend}: {len(chunks)} chunks, {kept} bytes kept")  # pytest -rP
        assert b"".join(c for s, c in chunks if s == "stdout") == result.stdout
        assert kept < 15 * _WRITES, (len(chunks), kept)

    def test_a_signal_reaches_the_process_and_nothing_on_the_host(
        self, sb: sandboxer.Sandbox
    ) -> None:
        """kill(SIGTERM) goes to the spawned command in the sandbox; a host process with
        a pid of its own is left alone."""
        script = "trap 'echo got-term; exit 7' TERM; echo up; while :; do sleep 1; done"
        with sb.spawn(["sh", "-c", script]) as proc:
            assert proc.read(timeout=PATIENCE) == ("stdout", b"up\n")
            assert proc.pid is not None
            with subprocess.Popen(["sleep", "600"]) as bystander:
                try:
                    proc.kill(signal.SIGTERM)
                    result = proc.wait(timeout=PATIENCE)
                    assert bystander.poll() is None
                finally:
                    bystander.kill()
        assert result.exit_code == 7 and b"got-term" in result.stdout


@pytest.fixture(scope="class")
def mounted(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MountedSandbox]:
    """A sandbox with two writable host directories: /data, and /keep holding a file."""
    data, keep, closed = (tmp_path_factory.mktemp(n) for n in ("data", "keep", "closed"))
    for directory in (data, keep):
        directory.chmod(0o777)  # writable by the sandbox's user, whatever its uid
    (keep / "precious").write_bytes(b"host data")
    (keep / "precious").chmod(0o666)
    closed.chmod(0o755)  # the host's, not the sandbox user's to write
    mounts = [
        sandboxer.Mount(source=str(data), target="/data"),
        sandboxer.Mount(source=str(keep), target="/keep"),
        sandboxer.Mount(source=str(closed), target="/closed"),
    ]
    with sandboxer.launch(backend=backend, mounts=mounts) as sandbox:
        yield MountedSandbox(sandbox, keep, closed)


class MountedSandbox(NamedTuple):
    sb: sandboxer.Sandbox
    keep: Path
    closed: Path


class TestFileCallsThroughPlantedLinks:
    """The file calls run as the sandbox's user: a symlink the sandbox plants reaches
    only what that user could reach anyway, and a removal never follows one.

    Docker and Incus only: on libvirt a directory the guest makes in a writable host
    mount belongs to QEMU's user (9p squash), so the guest's user cannot plant the tree
    (a documented limit of libvirt mounts, backends/libvirt/README.md)."""

    @pytest.fixture(scope="class", params=["docker", "incus"])
    @classmethod
    def backend(cls, request: pytest.FixtureRequest) -> str:
        name: str = request.param
        return name

    def test_a_recursive_remove_never_follows_links_out_of_the_tree(
        self, mounted: MountedSandbox
    ) -> None:
        sb = mounted.sb
        planted = (
            "mkdir -p /data/tree/deeper && ln -s /keep /data/tree/to-keep && "
            "ln -s /keep/precious /data/tree/deeper/to-precious && ln -s / /data/tree/to-root"
        )
        assert sb.exec(["sh", "-c", planted]).ok
        sb.remove("/data/tree", recursive=True)
        assert not sb.exists("/data/tree")
        assert (mounted.keep / "precious").read_bytes() == b"host data"
        assert sb.exists("/etc/passwd") and sb.listdir("/keep") == ["precious"]

    def test_a_remove_through_a_link_at_the_path_removes_the_link(
        self, mounted: MountedSandbox
    ) -> None:
        sb = mounted.sb
        assert sb.exec(["ln", "-s", "/keep", "/data/link-dir"]).ok
        sb.remove("/data/link-dir", recursive=True)
        assert not sb.exists("/data/link-dir")
        assert (mounted.keep / "precious").exists()

    def test_write_file_and_mkdir_through_a_planted_link_reach_no_further(
        self, mounted: MountedSandbox
    ) -> None:
        """A directory the sandbox's user may not write (the host's /closed) stays
        closed when the user swaps a link to it into the path a caller writes to."""
        sb = mounted.sb
        assert sb.exec(["sh", "-c", "mkdir -p /tmp/u && ln -sfn /closed /tmp/u/conf"]).ok
        with pytest.raises(sandboxer.SandboxError):
            sb.write_file("/tmp/u/conf/evil", b"caller data", parents=True)
        with pytest.raises(sandboxer.SandboxPermissionError):
            sb.mkdir("/tmp/u/conf/made", parents=True)
        assert list(mounted.closed.iterdir()) == []

    def test_hostile_names_round_trip(self, mounted: MountedSandbox) -> None:
        sb = mounted.sb
        texts = ["-rf", "new\nline", "tab\there", " lead", "--", "x;rm -rf ~", "$(id)"]
        made = 'cd /data && for n in "$@"; do : > "$n"; done'
        assert sb.exec(["sh", "-c", made, "sh", *texts]).ok
        # argv is JSON text on the engines: the name that is no UTF-8 is made by printf.
        assert sb.exec(["sh", "-c", "cd /data && : > \"$(printf '\\377\\376')\""]).ok
        names = [*texts, "\udcff\udcfe"]
        listed = sb.listdir("/data")
        assert set(names) <= set(listed)
        for name in names:
            assert sb.stat(f"/data/{name}").type == "file"
            sb.remove(f"/data/{name}")
        assert not set(names) & set(sb.listdir("/data"))

    def test_the_root_and_what_normalises_to_it_are_refused(self, mounted: MountedSandbox) -> None:
        for path in ("/", "//", "/.", "/tmp/..", "/../.."):
            with pytest.raises(sandboxer.InvalidSpec):
                mounted.sb.remove(path, recursive=True)
        assert mounted.sb.exists("/etc/passwd")


class TestCarelessTerminalInput:
    def test_detach_keys_typed_into_a_terminal_leave_nothing_running(
        self, sb: sandboxer.Sandbox
    ) -> None:
        """Docker ends a terminal's session on its detach keys and leaves the command
        running; bytes a caller relays (ours stand in for the defaults) must not leave
        a command behind its Pty, outside its timeout and close()."""
        detach = b"\x1e\x1f" * 8 + b"\x10\x11"  # sandboxer's keys, then docker's ctrl-p ctrl-q
        with sb.pty(["sh", "-c", "echo up; exec sleep 301"], timeout=10) as terminal:
            shown = b""
            while b"up\r\n" not in shown:  # the echo may come in pieces
                chunk = terminal.read(timeout=PATIENCE)
                assert chunk, f"the terminal ended or went quiet after {shown!r}"
                shown += chunk
            terminal.write(detach)
            terminal.wait(timeout=PATIENCE)
        left = sb.exec(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"]).stdout
        assert b"sleep 301" not in left
