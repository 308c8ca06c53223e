"""Killing a sandbox's process and everything it started, from the host (for local engines).

Only processes proven to be the sandbox's are signalled: each is held through a pidfd
first, then checked to be in the sandbox's PID namespace (and, below the first, to be a
child of a process already proven), and signalled through that pidfd. A pid that was
reused meanwhile, or belongs to another namespace, is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid

# Set in the environment of an exec that has a timeout: children inherit it, so the whole
# tree (orphans and setsid'd daemons included) can be found and killed from the host.
EXEC_MARKER = "SANDBOXER_EXEC_ID"


def pid_namespace(pid: int) -> int | None:
    """The inode of `pid`'s PID namespace, or None where this host cannot see `pid`."""
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    return found


def _hold(pid: int, namespace: int, parent: int | None) -> int | None:
    """A pidfd for `pid` if, once held, it is proven the sandbox's: a child of `parent`
    (itself proven), or with no parent given, in the PID namespace `namespace`."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    # Checked after the pidfd is held: a pid reused before that fails these checks, and
    # one that exits after it leaves a pidfd no signal can pass through.
    in_place = _parent(pid) == parent if parent is not None else pid_namespace(pid) == namespace
    if not in_place:
        os.close(pidfd)
        return None
    return pidfd


def _signal(pidfd: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        signal.pidfd_send_signal(pidfd, signum)


def _stop_tree(root: int, namespace: int, held: list[int]) -> None:
    """Hold and SIGSTOP `root` and its descendants, breadth first: a sandbox may nest
    processes as deep as its pids limit allows, so no recursion."""
    pending: list[tuple[int, int | None]] = [(root, None)]
    while pending:
        pid, parent = pending.pop()
        pidfd = _hold(pid, namespace, parent)
        if pidfd is None:
            continue
        held.append(pidfd)
        # Stopped first, so nothing forks new children while the tree is being walked.
        _signal(pidfd, signal.SIGSTOP)
        pending += [(child, pid) for child in _children(pid)]


def kill_process_tree(pid: int, namespace: int) -> bool:
    """SIGKILL `pid` and all its descendants, if `pid` is in the PID namespace
    `namespace` (the sandbox's); False if it is not, or not visible from here."""
    held: list[int] = []
    try:
        _stop_tree(pid, namespace, held)
    finally:
        # Whatever stopped the walk, nothing held is left stopped: all of it dies.
        for pidfd in held:
            _signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
    return bool(held)


def new_exec_marker() -> tuple[str, str]:
    """(variable, value) to put in an exec's environment for `kill_exec`."""
    return EXEC_MARKER, uuid.uuid4().hex


def ticks_now() -> int:
    """Clock ticks since boot: the unit of a process's start time in /proc/PID/stat."""
    with open("/proc/uptime") as uptime:
        return int(float(uptime.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # The command name (field 2) may hold spaces: fields after it follow the last ')'.
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _markers(pid: int) -> list[bytes]:
    prefix = EXEC_MARKER.encode() + b"="
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return [v for v in environ.read().split(b"\0") if v.startswith(prefix)]
    except OSError:
        return []


def _escaped(pid: int, namespace: int, init: int, started: int) -> bool:
    """Whether unmarked `pid` left an exec that began at `started`: started since, and
    re-parented to the sandbox's init or to a subreaper outside the sandbox. (The init's
    own child, the main command, started before any exec.)"""
    start, parent = start_ticks(pid), _parent(pid)
    # Strictly later: the main command may have started in the very tick the exec did
    # (an exec right after launch), while an exec's own processes take longer to spawn.
    if start is None or not parent or start <= started:
        return False  # (parent 0: the host's own init or a kernel thread)
    return parent == init or pid_namespace(parent) != namespace


def kill_exec(marker: str, init: int, started: int, *, root: int = 0) -> bool:
    """SIGKILL one exec's processes in the sandbox whose init is host pid `init`.

    That is: the tree of the exec's `root` (its host pid, where the engine tells it);
    every process carrying the exec's `marker`, with its tree; and the trees of processes
    no exec marks (they dropped the variable) that started since the exec did (`started`,
    in ticks since boot) and were re-parented out of it. Only processes proven to be in
    the sandbox's PID namespace are touched. False if nothing was killed.
    """
    namespace = pid_namespace(init)
    # The engine's init pid, if reused by a host process since the engine reported it,
    # must not make the host's own namespace pass for the sandbox's.
    if namespace is None or namespace == pid_namespace(os.getpid()):
        return False
    killed = bool(root) and kill_process_tree(root, namespace)
    ours = f"{EXEC_MARKER}={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == init:
            continue
        pid = int(entry)
        if pid_namespace(pid) != namespace:
            continue
        markers = _markers(pid)
        if ours in markers or (not markers and _escaped(pid, namespace, init, started)):
            killed = kill_process_tree(pid, namespace) or killed
    return killed


def namespace_pid(pid: int) -> int | None:
    """`pid` as its own (innermost) PID namespace numbers it: the last field of NSpid."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def exec_pid(marker: str, init: int) -> int | None:
    """The pid, as the sandbox sees it, of the command an exec marked `marker` started in
    the sandbox whose init is host pid `init`: the marked process whose parent is not a
    marked one of the sandbox (the earliest, if it forked and left). None when none is
    visible from here."""
    namespace = pid_namespace(init)
    if namespace is None or namespace == pid_namespace(os.getpid()):
        return None
    ours = f"{EXEC_MARKER}={marker}".encode()
    marked = [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit()
        and pid_namespace(int(entry)) == namespace
        and ours in _markers(int(entry))
    ]
    roots = [(start_ticks(pid) or 0, pid) for pid in marked if _parent(pid) not in marked]
    return namespace_pid(min(roots)[1]) if roots else None


def signal_process(pid: int, init: int, signum: int) -> bool:
    """Send `signum` to host pid `pid` alone, if it is in the PID namespace of the
    sandbox whose init is host pid `init`; False if it is not, or not visible from here."""
    namespace = pid_namespace(init)
    if namespace is None or namespace == pid_namespace(os.getpid()):
        return False  # as in kill_exec: a reused init pid must not stand for the host
    pidfd = _hold(pid, namespace, None)
    if pidfd is None:
        return False
    try:
        _signal(pidfd, signum)
    finally:
        os.close(pidfd)
    return True
