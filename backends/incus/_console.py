"""A container's console log, whole.

Incus' console endpoint drains LXC's ring buffer: each read returns only what arrived
since the previous one, and LXC appends everything to `console.log` in the daemon's log
directory. So where the daemon is local, the log is that file's tail (after the read,
which flushes the buffer into it); a remote daemon gives what its endpoint gives.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Debian's incus keeps its logs here; a daemon with its own INCUS_DIR, in $INCUS_DIR/logs.
_DEFAULT_SOCKET = "/var/lib/incus/unix.socket"
_DEFAULT_LOGS = Path("/var/log/incus")


def log_directory(socket_path: str) -> Path:
    if socket_path == _DEFAULT_SOCKET:
        return _DEFAULT_LOGS
    return Path(socket_path).parent / "logs"


def console_tail(logs: Path, instance: str, limit: int) -> bytes | None:
    """The last `limit` bytes of the instance's console.log, or None where there is none.
    Opened without following links: the directory is the daemon's, the bytes the
    sandbox's (bounded, never interpreted here)."""
    if not instance or "/" in instance or instance in (".", ".."):
        return None
    try:
        descriptor = os.open(
            logs / instance / "console.log", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        )
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as log:
        info = os.fstat(log.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        log.seek(max(0, info.st_size - limit))
        return log.read(limit)
