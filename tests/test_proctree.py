"""Timeout kills stay inside the sandbox: only processes proven to be in its PID namespace
are signalled, whatever they carry in their environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from sandboxer._proctree import EXEC_MARKER, kill_exec, new_exec_marker, ticks_now


def _alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    return [int(child) for child in _read(f"/proc/{pid}/task/{pid}/children").split()]


@pytest.fixture
def other_namespace() -> Iterator[int]:
    """The host pid of a process in a PID namespace of its own (a stand-in sandbox init)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("these tests need root and util-linux's unshare, as CI has")
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "600"])
    try:
        deadline = time.monotonic() + 10
        while True:
            children = _children(holder.pid)
            if children or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert children, "unshare did not start its child"
        yield children[0]
    finally:
        holder.kill()
        holder.wait()


def test_a_marked_process_outside_the_sandbox_is_never_killed(other_namespace: int) -> None:
    variable, marker = new_exec_marker()
    started = ticks_now()
    host = subprocess.Popen(["sleep", "600"], env={**os.environ, variable: marker})
    try:
        assert not kill_exec(marker, other_namespace, started, root=host.pid)
        time.sleep(0.2)
        assert _alive(host)
    finally:
        host.kill()
        host.wait()


def test_marked_processes_and_their_trees_die_inside_the_namespace() -> None:
    variable, marker = new_exec_marker()
    started = ticks_now()
    # This process's own namespace stands in for the sandbox's; the init is pid 1 there.
    tree = subprocess.Popen(
        ["sh", "-c", f"env -u {EXEC_MARKER} sleep 600 & sleep 600"],
        env={**os.environ, variable: marker},
    )
    time.sleep(0.2)
    child = _children(tree.pid)[0]
    assert kill_exec(marker, os.getpid(), started)
    tree.wait(timeout=10)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.05)
    state = _read(f"/proc/{child}/stat").split()[2:3]
    assert state in ([], ["Z"])


def test_an_unmarked_process_older_than_the_exec_is_left_alone() -> None:
    _, marker = new_exec_marker()
    before = subprocess.Popen(["sleep", "600"])
    try:
        time.sleep(0.05)
        assert not kill_exec(marker, os.getpid(), ticks_now() + 1000)
        assert _alive(before)
    finally:
        before.kill()
        before.wait()
