"""Killing a process and everything it started, from the host (for local container engines)."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid

# Set in the environment of an exec that has a timeout: children inherit it, so the whole
# tree (orphans and setsid'd daemons included) can be found and killed from the host.
EXEC_MARKER = "SANDBOXER_EXEC_ID"


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
    return found


def kill_process_tree(pid: int) -> bool:
    """SIGKILL `pid` and all its descendants; False if `pid` is not visible from here."""
    if not os.path.exists(f"/proc/{pid}"):
        return False
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        # Stop first so nothing forks new children while the tree is being walked.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(current, signal.SIGSTOP)
        pending += _children(current)
    for member in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)
    return True


def new_exec_marker() -> tuple[str, str]:
    """(variable, value) to put in a timed exec's environment for `kill_marked`."""
    return EXEC_MARKER, uuid.uuid4().hex


def kill_marked(value: str) -> bool:
    """SIGKILL every host process (and its tree) whose environment carries the marker.

    Engines do not always tell an exec's host pid, and orphans leave its tree anyway;
    the inherited variable finds them all. False if none is seen from here.
    """
    needle = f"{EXEC_MARKER}={value}".encode()
    found = False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
        except OSError:
            continue
        if needle in variables:
            found = kill_process_tree(int(entry)) or found
    return found
