"""Killing a process and everything it started, from the host (for local container engines)."""

from __future__ import annotations

import contextlib
import os
import signal


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
