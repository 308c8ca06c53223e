"""A fresh volume's root directory, given to the sandbox's user at its first use.

Docker and Incus make a new volume's root owned by root, mode 0755: a hardened sandbox
(uid 1000) could not write its own volume. Adapters whose engine keeps the volume in a
host directory call `claim_volume_dir` before the sandbox starts.
"""

from __future__ import annotations

import os


def volume_dir_owner(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) a fresh volume's root is given for a sandbox running as `user`, where
    that is a numeric non-root 'uid[:gid]' (gid: the uid's when absent); else None."""
    uid, _, gid = (user or "").partition(":")
    if not uid.isdigit() or int(uid) == 0 or (gid and not gid.isdigit()):
        return None
    return int(uid), int(gid or uid)


def claim_volume_dir(path: str, user: str | None) -> None:
    """Give the volume root `path` (a host directory the engine made) to the sandbox's
    user, at its first use: only while it is still root's and empty, so data already
    there keeps its owner. The last component is not followed if a link."""
    owner = volume_dir_owner(user)
    if owner is None:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_uid == 0 and not os.listdir(fd):
            os.fchown(fd, *owner)
    finally:
        os.close(fd)
