"""Writes into a created, not yet started instance's root through Incus' file API.

A read-only root cannot get mount points once the sandbox runs (LXC's create=dir fails
on it), so they are made here first; so are a missing working directory of the helper
init and the built-in init's service that runs spec.command.
"""

from __future__ import annotations

import os
import posixpath
import shlex
from collections.abc import Callable

from sandboxer.backend import LaunchPlan

from ._boot import Boot, Init
from ._client import Incus
from ._errors import incus_errors

# Run by the built-in images' init at boot: how spec.command becomes the main service.
COMMAND_SERVICE = "/etc/sandboxer/services/50-command"
# Whether a directory exists in the image (as far as can be told before it runs).
Exists = Callable[[str], bool]


def paths(plan: LaunchPlan, boot: Boot, exists: Exists) -> list[tuple[str, bool]]:
    """(path, is a file) to make before the sandbox starts: what is mounted over a
    read-only root (LXC's create=dir fails on it), and the helper init's working
    directory (LXC fails to start in a missing one; Docker makes it too)."""
    points = []
    if plan.read_only_root:
        points += [(t.path, False) for t in plan.tmpfs if not exists(t.path)]
        points += [(m.target, not os.path.isdir(m.source)) for m in plan.mounts]
        points += [(v.target, False) for v in plan.volumes]
    if boot.init is Init.HELPER and not exists(boot.workdir):
        points.append((boot.workdir, False))
    return points


def command_script(argv: tuple[str, ...], workdir: str | None) -> bytes:
    script = "#!/bin/sh\n"
    if workdir:
        script += f"cd {shlex.quote(workdir)} || exit 1\n"
    return (script + f"exec {shlex.join(argv)}\n").encode()


def service(plan: LaunchPlan, boot: Boot) -> bytes | None:
    """The built-in init's service running spec.command (the helper init takes argv)."""
    if boot.init is Init.BUILTIN and plan.command:
        return command_script(plan.command, plan.workdir)
    return None


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

    def run(self, points: list[tuple[str, bool]], script: bytes | None) -> None:
        with incus_errors():
            for path, is_file in points:
                self.make_path(path, is_file)
            if script is not None:
                self._put(COMMAND_SERVICE, "file", script)
