"""The non_root_user claim for a user given by name: the image defines the name and runc
looks it up only as the container starts. So before the start, the created container's
own /etc/passwd is read through the engine (bounded, its symlinks resolved inside the
container by the engine, a few hops at most) and resolved by the core's rules."""

from __future__ import annotations

import io
import posixpath
import tarfile
from typing import Any

from sandboxer.backend import InvalidSpec, LaunchPlan
from sandboxer.images.accounts import check_not_root, is_numeric, resolve, user_to_check

from ._sdk import docker

_MAX_PASSWD = 1024 * 1024  # real ones are KiB
_MAX_HOPS = 8


def check_user(api: Any, container: str, plan: LaunchPlan) -> None:
    """InvalidSpec if the plan's user is uid 0 (a name: in the container's /etc/passwd)."""
    user = user_to_check(plan)
    if user is None:
        return
    # A number needs no file ("0" is relaxed by the plan, but "00" is root too).
    passwd = "" if is_numeric(f"{user}:0") else _read(api, container, "/etc/passwd")
    try:
        identity = resolve(user, passwd, "")
    except InvalidSpec:
        return  # a name the image does not know: the start fails with Docker's error
    check_not_root(user, identity)


def _read(api: Any, container: str, path: str) -> str:
    """A small text file of the container ("" if absent or not a file)."""
    for _ in range(_MAX_HOPS):
        try:
            chunks, _stat = api.get_archive(container, path)
        except docker.errors.NotFound:
            return ""
        data = bytearray()
        for chunk in chunks:
            data += chunk
            if len(data) > _MAX_PASSWD + 64 * 1024:  # the file and its tar headers
                raise InvalidSpec("user", f"the image's {path} is over {_MAX_PASSWD} bytes")
        with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
            member = tar.next()
            if member is None:
                return ""
            if member.issym():
                path = posixpath.normpath(posixpath.join(posixpath.dirname(path), member.linkname))
                continue
            source = tar.extractfile(member) if member.isreg() else None
            return "" if source is None else source.read().decode("utf-8", "replace")
    return ""
