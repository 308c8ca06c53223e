"""A spec's user ("name", "uid", "name:group" or "uid:gid") resolved to the numeric ids
Incus' exec takes, from the sandbox's own /etc/passwd and /etc/group."""

from __future__ import annotations

import attrs

from sandboxer.backend import InvalidSpec


@attrs.frozen
class Identity:
    uid: int
    gid: int
    home: str | None = None


def is_numeric(user: str) -> bool:
    """Fully numeric "uid:gid": no file needs reading."""
    parts = user.split(":")
    return len(parts) == 2 and all(part.isdigit() for part in parts)


def _table(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve(user: str, passwd: str, group: str) -> Identity:
    """Ids for `user`; a bare uid takes its passwd entry's group, or a group of the same id."""
    name, _, group_name = user.partition(":")
    users = _table(passwd)
    entry = next((row for row in users if len(row) >= 4 and name in (row[0], row[2])), None)
    if entry is not None:
        uid, gid, home = int(entry[2]), int(entry[3]), entry[5] if len(entry) > 5 else None
    elif name.isdigit():
        uid, gid, home = int(name), int(name), None
    else:
        raise InvalidSpec("user", f"no user {name!r} in the sandbox's /etc/passwd")
    if group_name:
        if group_name.isdigit():
            gid = int(group_name)
        else:
            row = next((r for r in _table(group) if len(r) >= 3 and r[0] == group_name), None)
            if row is None:
                raise InvalidSpec("user", f"no group {group_name!r} in the sandbox's /etc/group")
            gid = int(row[2])
    return Identity(uid, gid, home)
