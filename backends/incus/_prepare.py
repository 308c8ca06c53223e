"""Writes into a created, not yet started instance's root through Incus' file API.

A read-only root cannot get mount points once the sandbox runs (LXC's create=dir fails
on it), so they are made here first; so is the service that runs spec.command.
"""

from __future__ import annotations

import os
import posixpath
import shlex

from sandboxer.backend import LaunchPlan
from sandboxer.images import ROOTFS_DIRECTORIES, is_builtin

from ._client import Incus
from ._errors import incus_errors

# Run by the built-in images' init at boot: how spec.command becomes the main service.
COMMAND_SERVICE = "/etc/sandboxer/services/50-command"


def mount_points(plan: LaunchPlan) -> list[tuple[str, bool]]:
    """(path, is a file) for everything mounted over a read-only root; else nothing."""
    if not plan.read_only_root:
        return []
    # The built-in images already have these directories: nothing to make for them.
    present = ROOTFS_DIRECTORIES if is_builtin(plan.image) else frozenset()
    points = [(t.path, False) for t in plan.tmpfs if t.path.rstrip("/") not in present]
    points += [(m.target, not os.path.isdir(m.source)) for m in plan.mounts]
    return points


def command_script(argv: tuple[str, ...], workdir: str | None) -> bytes:
    script = "#!/bin/sh\n"
    if workdir:
        script += f"cd {shlex.quote(workdir)} || exit 1\n"
    return (script + f"exec {shlex.join(argv)}\n").encode()


def needed(plan: LaunchPlan) -> bool:
    return bool(plan.command or mount_points(plan))


class Preparer:
    def __init__(self, incus: Incus, name: str) -> None:
        self._incus, self._name = incus, name
        self._files = incus.api.instances[name].files

    def _exists(self, path: str) -> bool:
        return self._incus.file_type(self._name, path) is not None

    def _put(self, path: str, kind: str, data: bytes = b"", mode: str = "0755") -> None:
        headers = {
            "X-Incus-uid": "0",
            "X-Incus-gid": "0",
            "X-Incus-mode": mode,
            "X-Incus-type": kind,
        }
        self._files.post(params={"path": path}, data=data, headers=headers)

    def make_path(self, path: str, is_file: bool) -> None:
        """Create `path` and missing parents; anything that exists is left alone."""
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            current = "/" + posixpath.join(*parts[:depth])
            if not self._exists(current):
                last = depth == len(parts)
                self._put(
                    current,
                    "file" if is_file and last else "directory",
                    mode="0644" if is_file and last else "0755",
                )

    def run(self, plan: LaunchPlan) -> None:
        with incus_errors():
            for path, is_file in mount_points(plan):
                self.make_path(path, is_file)
            if plan.command:
                self._put(COMMAND_SERVICE, "file", command_script(plan.command, plan.workdir))
