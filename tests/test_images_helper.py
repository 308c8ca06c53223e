"""The static helper: built once, read-only, and its init runs a main process in a
root with no shell of its own (checked in a chroot, in its own PID namespace)."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sandboxer import ImageNotFound
from sandboxer.images import helper


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(helper.HELPER_DIR_ENV, str(tmp_path / "helper"))
    return tmp_path / "helper"


def test_helper_dir_is_read_only_and_holds_a_static_busybox(root: Path) -> None:
    made = helper.helper_dir()
    assert made.parent == root
    assert stat.S_IMODE(made.stat().st_mode) == 0o755
    for name in ("busybox", "init"):
        assert stat.S_IMODE((made / name).stat().st_mode) == 0o555
    assert helper.is_static_elf((made / "busybox").read_bytes())
    assert (made / "init").read_text().startswith("#!/.sandboxer/busybox sh\n")
    assert helper.helper_dir() == made  # the same content: the same directory


def test_concurrent_callers_build_one_directory(root: Path) -> None:
    found: list[Path] = []
    threads = [threading.Thread(target=lambda: found.append(helper.helper_dir())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 1
    assert [p.name for p in root.iterdir() if not p.name.startswith(".lock")] == [found[0].name]


def _elf(interpreter: bool) -> bytes:
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 32, 64)  # program headers right after the ELF header
    struct.pack_into("<HH", header, 54, 56, 1)
    program = bytearray(56)
    struct.pack_into("<I", program, 0, 3 if interpreter else 1)  # PT_INTERP or PT_LOAD
    return bytes(header + program)


def test_static_check_reads_the_elf_header() -> None:
    assert helper.is_static_elf(_elf(interpreter=False))
    assert not helper.is_static_elf(_elf(interpreter=True))
    assert not helper.is_static_elf(b"#!/bin/sh\n" + bytes(100))
    assert not helper.is_static_elf(_elf(interpreter=False)[:70])  # truncated headers


def test_a_dynamic_or_missing_busybox_is_refused_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dynamic = tmp_path / "busybox"
    dynamic.write_bytes(_elf(interpreter=True))
    monkeypatch.setattr(helper, "BUSYBOX_CANDIDATES", (str(dynamic), str(tmp_path / "none")))
    with pytest.raises(ImageNotFound, match="busybox-static"):
        helper.helper_dir()


def test_command_line_words_hold_no_space_and_decode_back() -> None:
    argv = ["sh", "-c", "echo 'a b'\n", ""]
    line = helper.init_command_line(argv)
    words = line.split()  # as LXC splits it: runs of spaces, no empty words
    assert words[:2] == [helper.INIT, "--base64"] and len(words) == 2 + len(argv)
    decoded = [base64.b64decode(word.removeprefix("_"), validate=True) for word in words[2:]]
    assert [word[0] for word in words[2:]] == ["_"] * len(argv)
    assert [data.decode() for data in decoded] == argv
    assert helper.init_command_line(None) == helper.INIT
    assert helper.init_argv(["x"]) == [helper.INIT, "--", "x"]
    assert helper.init_argv(None) == [helper.INIT]


# The init itself, as PID 1 of a PID namespace in a chroot that holds no shell ----------
def _run_init(tree: Path, made: Path, argv: list[str], wait_for: Path | None) -> tuple[str, float]:
    """PID 1's output, and how long it took to stop on SIGTERM once `wait_for` exists
    (None: a second after the start)."""
    (tree / ".sandboxer").mkdir()
    for name in ("proc", "dev", "out"):
        (tree / name).mkdir()
    os.mknod(tree / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    subprocess.run(["mount", "--bind", "-o", "ro", str(made), str(tree / ".sandboxer")], check=True)
    try:
        process = subprocess.Popen(
            ["unshare", "--fork", "--pid", "--mount", "chroot", str(tree),
             *helper.init_command_line(argv).split()],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={"PATH": "/usr/sbin:/usr/bin"},
        )  # fmt: skip
        if wait_for is None:
            time.sleep(1)
        else:
            deadline = time.monotonic() + 10
            while not wait_for.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert wait_for.exists(), "the main process did not run"
        init = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=True
        ).stdout.split()
        started = time.monotonic()
        os.kill(int(init[0]), 15)  # SIGTERM to PID 1, as `docker stop` does
        output, _ = process.communicate(timeout=10)
        return output.decode(), time.monotonic() - started
    finally:
        subprocess.run(["umount", "-l", str(tree / ".sandboxer")], check=False)


def test_init_runs_the_main_process_from_path_and_stops_on_sigterm(
    root: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    # The image's own `sh` (a busybox copy here), found in PATH; no /bin/sh exists.
    shutil.copy(helper.helper_dir() / "busybox", tree / "usr/bin/sh")
    script = (
        'echo "$$ [$0] [$1] [$2]" > /out/main; (trap "" TERM; sleep 60) & '
        "ls /proc > /out/proc; touch /out/ready"
    )
    output, took = _run_init(
        tree, helper.helper_dir(), ["sh", "-c", script, "a b\n", "", "x y"], tree / "out/ready"
    )
    pid, arguments = (tree / "out/main").read_text().split(" ", 1)
    assert int(pid) > 1  # a child of the init, which stays PID 1
    # Every argument whole (an empty one too), trailing newline kept.
    assert arguments == "[a b\n] [] [x y]\n"
    assert "1" in (tree / "out/proc").read_text().split()  # the init mounted /proc
    assert took < 5  # the orphan that ignores SIGTERM is killed within the bound
    assert "not found" not in output


def test_init_reports_a_main_process_missing_from_path(root: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    output, _ = _run_init(tree, helper.helper_dir(), ["no-such-program", "arg"], None)
    assert "no-such-program: not found in PATH" in output
