"""Reading an unpacked image tree on the host: its files are image content, so no symlink
in it is ever followed (its links point into the sandbox, not at the host)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .._errors import UnsupportedFeature
from .accounts import Identity, is_numeric, resolve

ACCOUNTS_MAX = 1024 * 1024  # bytes of /etc/passwd or /etc/group read from an image


def open_in_tree(rootfs: Path, path: str, flags: int) -> int:
    """A descriptor of `path` inside the tree, opened without following any symlink."""
    descriptor = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        parts = [part for part in path.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise FileNotFoundError(errno.ENOENT, "no .. in an image path", path)
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            mode = flags if last else os.O_RDONLY | os.O_DIRECTORY
            following = os.open(part, mode | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = following
        return descriptor
    except BaseException:
        os.close(descriptor)
        raise


def read_in_tree(rootfs: Path, path: str) -> str:
    """A small text file of the image (its accounts); "" if absent or reached through a
    symlink; refused past ACCOUNTS_MAX."""
    try:
        descriptor = open_in_tree(rootfs, path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return ""
        data = file.read(ACCOUNTS_MAX + 1)
    if len(data) > ACCOUNTS_MAX:
        raise UnsupportedFeature(f"the image's {path} is larger than {ACCOUNTS_MAX} bytes")
    return data.decode("utf-8", "replace")


def is_directory_in_tree(rootfs: Path, path: str) -> bool:
    """Whether `path` is a directory of the tree reached with no symlink on the way."""
    try:
        os.close(open_in_tree(rootfs, path, os.O_RDONLY | os.O_DIRECTORY))
    except OSError:
        return False
    return True


def identity_in_tree(user: str, rootfs: Path) -> Identity:
    """`user` resolved against the image's own account files (a numeric uid:gid needs none)."""
    if is_numeric(user):
        return resolve(user, "", "")
    return resolve(user, read_in_tree(rootfs, "/etc/passwd"), read_in_tree(rootfs, "/etc/group"))
