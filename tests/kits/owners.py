"""Owner labels for tests of gc: the owner of a resource that has exited."""

from __future__ import annotations

import os
import subprocess

from sandboxer._labels import owner_identity


def dead_owner() -> str:
    """The OWNER label of a process of this boot and PID namespace that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    here = owner_identity(os.getpid())
    assert here is not None
    boot, namespace = here.split(":")[:2]
    return f"{boot}:{namespace}:{child.pid}:0"
