"""Who made a sandbox found on an engine, and when: read from the labels it carries.

Every function takes a `SandboxInfo` (from `sandboxer.inventory()` or an adapter's
`list_sandboxes()`) and answers None where the labels cannot tell.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from ._backend import SandboxInfo
from ._labels import CREATED_AT, EXPIRES, OWNER, OWNER_HOST, OWNER_PID, SESSION, owner_identity


def created_at(info: SandboxInfo) -> float | None:
    """When the sandbox was created (seconds since the epoch), from its label."""
    try:
        return float(info.labels[CREATED_AT])
    except (KeyError, ValueError):
        return None


def expires_at(info: SandboxInfo) -> float | None:
    """When the sandbox's max_lifetime ends (seconds since the epoch), or None: no end."""
    try:
        expires = float(info.labels[EXPIRES])
    except (KeyError, ValueError):
        return None
    return expires if math.isfinite(expires) else None


def owner_pid(info: SandboxInfo) -> int | None:
    try:
        return int(info.labels[OWNER_PID])
    except (KeyError, ValueError):
        return None


def owner_host(info: SandboxInfo) -> str | None:
    return info.labels.get(OWNER_HOST)


def session(info: SandboxInfo) -> str | None:
    """The session (one per process, or per pytest worker) that launched it."""
    return info.labels.get(SESSION)


def owner_alive(info: SandboxInfo) -> bool | None:
    """Whether the process that made the sandbox still runs; None when this process cannot
    tell (another host or boot, another PID namespace, or no owner label).

    The owner is its (boot id, PID-namespace inode, pid, start time): hostname and pid
    alone are shared by the containers of a CI fleet, and a pid may have been reused.
    """
    return labels_owner_alive(info.labels)


def labels_owner_alive(labels: Mapping[str, str]) -> bool | None:
    """`owner_alive` for anything carrying our labels (a volume, a network)."""
    owner = labels.get(OWNER, "")
    boot, _, rest = owner.partition(":")
    namespace, _, process = rest.partition(":")
    pid, _, _ = process.partition(":")
    here = owner_identity(os.getpid())
    if not owner or here is None or not pid.isdigit():
        return None
    if here.split(":")[:2] != [boot, namespace]:
        return None
    return owner_identity(int(pid)) == owner


def has_labels(info: SandboxInfo, wanted: Mapping[str, str]) -> bool:
    return all(info.labels.get(key) == value for key, value in wanted.items())
