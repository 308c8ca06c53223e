"""Ownership labels put on everything sandboxer creates, so leftovers can always be found."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Mapping

PREFIX = "sandboxer."
MANAGED = PREFIX + "managed"
OWNER_PID = PREFIX + "owner-pid"
OWNER_HOST = PREFIX + "owner-host"
SESSION = PREFIX + "session"
CREATED_AT = PREFIX + "created-at"
# The user commands run as by default, so a sandbox found again (attach) keeps it.
EXEC_USER = PREFIX + "user"

# One id for this process's lifetime; a pytest session or a `gc --session` narrows to it.
_SESSION_ID = os.environ.get("SANDBOXER_SESSION") or uuid.uuid4().hex[:12]


def session_id() -> str:
    return _SESSION_ID


def set_session(session: str) -> None:
    """Use `session` for everything launched from now on (e.g. one per pytest-xdist worker)."""
    global _SESSION_ID
    _SESSION_ID = session


def ownership_labels() -> dict[str, str]:
    """The labels that mark a resource as ours, with who made it and when."""
    return {
        MANAGED: "true",
        OWNER_PID: str(os.getpid()),
        OWNER_HOST: socket.gethostname(),
        SESSION: _SESSION_ID,
        CREATED_AT: f"{time.time():.3f}",
    }


def new_name() -> str:
    """A fresh sandbox name, unique across processes and hosts."""
    return f"sbx-{uuid.uuid4().hex[:12]}"


def is_ours(labels: Mapping[str, str]) -> bool:
    return labels.get(MANAGED) == "true"
