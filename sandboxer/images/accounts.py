"""A user ("name", "uid", "name:group" or "uid:gid") resolved to numeric ids from an
image's or a sandbox's own /etc/passwd and /etc/group, by runc's rules, for the engines
that switch ids themselves (Incus) or must know them before a start (Docker's checks)."""

from __future__ import annotations

import attrs

from .._errors import InvalidSpec
from .._plan import LaunchPlan
from .._vocabulary import Control

# LXC reads (uid_t)-1 as "keep the current id", which is root: the last valid id is one less.
_MAX_ID = 2**32 - 2


@attrs.frozen
class Identity:
    uid: int
    gid: int
    home: str | None = None


def _is_number(text: str) -> bool:
    # ASCII only: str.isdigit() also accepts other scripts' digits and superscripts.
    return text.isascii() and text.isdigit()


def is_numeric(user: str) -> bool:
    """Fully numeric "uid:gid": no file needs reading."""
    parts = user.split(":")
    return len(parts) == 2 and all(_is_number(part) for part in parts)


def _id(text: str, what: str) -> int:
    """An id of the spec or of the image's account files, in the range LXC applies."""
    if not _is_number(text) or int(text) > _MAX_ID:
        raise InvalidSpec("user", f"{what} is {text!r}, not an id from 0 to {_MAX_ID}")
    return int(text)


def _table(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve(user: str, passwd: str, group: str) -> Identity:
    """Ids for `user`; a bare uid takes its passwd entry's group, or a group of the same id.
    A numeric user is always a uid, never a passwd name (runc's rule): an image naming a
    user "1000" with uid 0 must not turn a profile's "1000:1000" into root."""
    name, _, group_name = user.partition(":")
    users = [row for row in _table(passwd) if len(row) >= 4]
    if _is_number(name):
        uid = _id(name, "the uid")
        entry = next((row for row in users if _is_number(row[2]) and int(row[2]) == uid), None)
        gid = uid if entry is None else _id(entry[3], f"the gid of uid {uid} in /etc/passwd")
    else:
        entry = next((row for row in users if row[0] == name), None)
        if entry is None:
            raise InvalidSpec("user", f"no user {name!r} in the sandbox's /etc/passwd")
        uid = _id(entry[2], f"the uid of user {name!r} in /etc/passwd")
        gid = _id(entry[3], f"the gid of user {name!r} in /etc/passwd")
    home = entry[5] if entry is not None and len(entry) > 5 else None
    if group_name:
        gid = _group(group_name, group)
    return Identity(uid, gid, home)


def _group(name: str, group: str) -> int:
    if _is_number(name):
        return _id(name, "the gid")
    row = next((r for r in _table(group) if len(r) >= 3 and r[0] == name), None)
    if row is None:
        raise InvalidSpec("user", f"no group {name!r} in the sandbox's /etc/group")
    return _id(row[2], f"the gid of group {name!r} in /etc/group")


def user_to_check(plan: LaunchPlan) -> str | None:
    """The plan's user (name or uid) whose uid the non_root_user claim rests on, or None
    when there is nothing to check: no such control, or root asked for (reported
    relaxed). A name is the image's to define, and "00" is uid 0 as much as "0" is."""
    relaxed = {item.control for item in plan.relaxed}
    if Control.NON_ROOT_USER not in plan.controls or Control.NON_ROOT_USER in relaxed:
        return None
    return (plan.user or "").partition(":")[0] or None


def check_not_root(user: str, identity: Identity) -> None:
    """Refuse `user` when it is uid 0 (by the image's /etc/passwd, for a name): the
    sandbox would run as root under a profile that claims it does not."""
    if identity.uid == 0:
        where = "" if _is_number(user) else " in the image's /etc/passwd"
        raise InvalidSpec(
            "user",
            f"{user!r} is uid 0{where}, which the profile's non_root_user control forbids; "
            "give a non-root numeric uid:gid",
        )
