"""Ownership labels put on everything sandboxer creates, so leftovers can always be found."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Mapping

from ._proctree import pid_namespace, start_ticks

PREFIX = "sandboxer."
MANAGED = PREFIX + "managed"
OWNER_PID = PREFIX + "owner-pid"
OWNER_HOST = PREFIX + "owner-host"
SESSION = PREFIX + "session"
CREATED_AT = PREFIX + "created-at"
# The owner process's identity across hosts and PID namespaces: boot id, PID-namespace
# inode, pid and start time (see owner_identity); a pid alone may be reused or foreign.
OWNER = PREFIX + "owner"
# One launch's own id: a failed launch and destroy() remove only what carries it.
LAUNCH = PREFIX + "launch"
# Set by `run --keep`: the sandbox is meant to outlive its owner, so gc keeps it.
KEEP = PREFIX + "keep"
# The user commands run as by default, so a sandbox found again (attach) keeps it.
EXEC_USER = PREFIX + "user"
# When a sandbox's max_lifetime ends (epoch seconds): its reaper and gc remove it then.
EXPIRES = PREFIX + "expires"
# The volumes a sandbox mounts (comma-separated names): one in use is not removed.
VOLUMES = PREFIX + "volumes"
# The named networks a sandbox is on (comma-separated names): one in use is not removed.
NETWORKS = PREFIX + "networks"
# A volume that goes with its owner process (gc removes it once the owner has exited).
EPHEMERAL = PREFIX + "ephemeral"
# The private paths the engine mounts in place of the mount sources (see _pinned).
PINS = PREFIX + "pins"

# One id for this process's lifetime; a pytest session or a `gc --session` narrows to it.
_SESSION_ID = os.environ.get("SANDBOXER_SESSION") or uuid.uuid4().hex[:12]


def session_id() -> str:
    return _SESSION_ID


def set_session(session: str) -> None:
    """Use `session` for everything launched from now on (e.g. one per pytest-xdist worker)."""
    global _SESSION_ID
    _SESSION_ID = session


def ownership_labels() -> dict[str, str]:
    """The labels that mark a resource as ours, with who made it and when; each call
    carries a new launch id."""
    return {
        MANAGED: "true",
        OWNER_PID: str(os.getpid()),
        OWNER_HOST: socket.gethostname(),
        OWNER: owner_identity(os.getpid()) or "",
        SESSION: _SESSION_ID,
        CREATED_AT: f"{time.time():.3f}",
        LAUNCH: uuid.uuid4().hex,
    }


def boot_id() -> str:
    """This kernel boot's random id: equal only on the same host since the same boot."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def owner_identity(pid: int) -> str | None:
    """`boot:pidns:pid:start` for process `pid`, or None when /proc cannot tell (it has
    exited). Unique across hosts, containers of a fleet and pid reuse."""
    namespace, start = pid_namespace(pid), start_ticks(pid)
    if namespace is None or start is None:
        return None
    return f"{boot_id()}:{namespace}:{pid}:{start}"


def new_name() -> str:
    """A fresh sandbox name, unique across processes and hosts."""
    return f"sbx-{uuid.uuid4().hex[:12]}"


def is_ours(labels: Mapping[str, str]) -> bool:
    return labels.get(MANAGED) == "true"
