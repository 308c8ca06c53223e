"""Timeout kills stay inside the sandbox: only processes proven to be in its PID namespace
are signalled, whatever they carry in their environment.

A process in a PID namespace of its own (made with util-linux's `unshare`) stands in for
a sandbox's init; commands start in it from a parent outside, as an engine's exec does.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from sandboxer._proctree import (
    EXEC_MARKER,
    exec_pid,
    kill_exec,
    namespace_pid,
    new_exec_marker,
    signal_process,
    ticks_now,
)

CLONE_NEWPID = 0x20000000


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    return [int(child) for child in _read(f"/proc/{pid}/task/{pid}/children").split()]


def _live(pids: list[int]) -> list[int]:
    """Those of `pids` that have not ended (the stand-in init reaps nothing)."""
    return [
        p
        for p in pids
        if _read(f"/proc/{p}/stat").rsplit(")", 1)[-1].split()[:1] not in ([], ["Z"])
    ]


def _carrying(marker: str) -> list[int]:
    """Live processes whose environment carries the marker."""
    needle = f"{EXEC_MARKER}={marker}".encode()
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if needle in environ.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return _live(found)


def _wait_until(condition: Callable[[], object], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def sandbox_init() -> Iterator[int]:
    """The host pid of a process in a PID namespace of its own (a stand-in sandbox init)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.fail("these tests need root and util-linux's unshare, as CI has")
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "sleep", "600"])
    try:
        _wait_until(lambda: _children(holder.pid))
        assert _children(holder.pid), "unshare did not start its child"
        yield _children(holder.pid)[0]
    finally:
        holder.kill()
        holder.wait()


def _enter_pid_namespace(init: int) -> Callable[[], None]:
    """For preexec_fn: the started program's children go into `init`'s PID namespace."""

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWPID) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)

    return enter


def _exec_in(init: int, marker: str, script: str) -> subprocess.Popen[bytes]:
    """`script` run in the stand-in sandbox, marked, by a parent outside it, as an engine's
    exec runs it. (Not nsenter: it stops itself when its child is stopped.)"""
    return subprocess.Popen(
        ["sh", "-c", 'sh -c "$0"; :', script],
        env={**os.environ, EXEC_MARKER: marker},
        preexec_fn=_enter_pid_namespace(init),
    )


def test_a_marked_process_outside_the_sandbox_is_never_killed(sandbox_init: int) -> None:
    variable, marker = new_exec_marker()
    started = ticks_now()
    host = subprocess.Popen(["sleep", "600"], env={**os.environ, variable: marker})
    try:
        assert not kill_exec(marker, sandbox_init, started, root=host.pid)
        time.sleep(0.2)
        assert host.poll() is None
    finally:
        host.kill()
        host.wait()


def test_the_hosts_own_namespace_never_passes_for_a_sandbox() -> None:
    variable, marker = new_exec_marker()
    started = ticks_now()
    host = subprocess.Popen(["sleep", "600"], env={**os.environ, variable: marker})
    try:
        # As if the engine's init pid had been reused by a host process.
        assert not kill_exec(marker, os.getpid(), started, root=host.pid)
        assert host.poll() is None
    finally:
        host.kill()
        host.wait()


def test_an_exec_and_what_dropped_its_marker_die(sandbox_init: int) -> None:
    _, marker = new_exec_marker()
    started = ticks_now()
    drop = f"env -u {EXEC_MARKER}"
    command = _exec_in(sandbox_init, marker, f"({drop} sleep 601 &); {drop} sleep 602 & wait")
    _wait_until(lambda: len(_children(sandbox_init)) >= 2)  # the orphan, adopted by init
    assert kill_exec(marker, sandbox_init, started)
    command.wait(timeout=15)
    _wait_until(lambda: not _live(_children(sandbox_init)))
    assert _live(_children(sandbox_init)) == [] and _carrying(marker) == []


def test_a_tree_deeper_than_pythons_recursion_limit_dies(sandbox_init: int) -> None:
    _, marker = new_exec_marker()
    started = ticks_now()
    depth = 1200
    # Each level a shell waiting on the next ("; :" keeps it from exec'ing its last command).
    level = 'if [ "$1" -gt 0 ]; then sh -c "$0" "$0" $(($1 - 1)); :; else sleep 603; fi'
    command = _exec_in(sandbox_init, marker, f"sh -c '{level}' '{level}' {depth}")
    _wait_until(lambda: len(_carrying(marker)) > depth, seconds=60)
    assert kill_exec(marker, sandbox_init, started)
    command.wait(timeout=15)
    _wait_until(lambda: not _carrying(marker))
    assert _carrying(marker) == []


def test_an_unmarked_process_older_than_the_exec_is_left_alone(sandbox_init: int) -> None:
    _, marker = new_exec_marker()
    environment = {k: v for k, v in os.environ.items() if k != EXEC_MARKER}
    older = subprocess.Popen(
        ["sh", "-c", "sleep 604; :"],
        env=environment,
        preexec_fn=_enter_pid_namespace(sandbox_init),
    )
    try:
        _wait_until(lambda: _children(older.pid))
        time.sleep(0.05)
        assert not kill_exec(marker, sandbox_init, ticks_now() + 1)
        assert older.poll() is None
        # The same process counts as the exec's when it started after the exec began.
        assert kill_exec(marker, sandbox_init, 0)
        older.wait(timeout=15)
    finally:
        older.kill()
        older.wait()


def test_signal_process_only_reaches_the_sandboxs_namespace(sandbox_init: int) -> None:
    outside = subprocess.Popen(["sleep", "600"])
    command = _exec_in(sandbox_init, new_exec_marker()[1], "sleep 600")
    try:
        _wait_until(lambda: _children(command.pid))
        inside = _children(command.pid)[0]  # the sleep, in the stand-in sandbox
        assert not signal_process(outside.pid, sandbox_init, signal.SIGTERM)
        # As if the engine's init pid had been reused by a host process.
        assert not signal_process(outside.pid, os.getpid(), signal.SIGTERM)
        assert outside.poll() is None
        assert signal_process(inside, sandbox_init, signal.SIGTERM)
        assert command.wait(timeout=15) == 0  # its sleep ended, then `:` ran
    finally:
        for process in (outside, command):
            process.kill()
            process.wait()


def test_exec_pid_is_the_commands_pid_inside(sandbox_init: int) -> None:
    _, marker = new_exec_marker()
    started = ticks_now()
    command = _exec_in(sandbox_init, marker, "sleep 603 & wait")
    try:
        # The command's shell is the stand-in init's sibling: pid 2 inside.
        _wait_until(lambda: exec_pid(marker, sandbox_init))
        assert exec_pid(marker, sandbox_init) == 2
        assert namespace_pid(sandbox_init) == 1
        # The host's own namespace never passes for a sandbox's.
        assert exec_pid(marker, os.getpid()) is None
    finally:
        kill_exec(marker, sandbox_init, started)
        command.wait(timeout=15)
