"""Named volumes as Docker volumes (local driver), and their mounts in a container."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

from sandboxer.backend import (
    LaunchPlan,
    SandboxExists,
    VolumeDriver,
    VolumeInfo,
    claim_volume_dir,
    is_ours,
    logger,
    volume_dir_owner,
)

from ._endpoint import socket_path
from ._errors import docker_errors
from ._sdk import docker


def volume_mounts(plan: LaunchPlan) -> list[docker.types.Mount]:
    # no_copy: the volume starts empty, as on the other engines (no copy of what the
    # image holds at the target, nor of that directory's owner).
    return [
        docker.types.Mount(v.target, v.name, type="volume", read_only=v.read_only, no_copy=True)
        for v in plan.volumes
    ]


class DockerVolumes(VolumeDriver):
    """Create, find, list and remove volumes through the low-level API client."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def _info(self, found: Mapping[str, Any]) -> VolumeInfo:
        return VolumeInfo("docker", found["Name"], found.get("Labels") or {})

    def _find(self, name: str) -> Mapping[str, Any] | None:
        with docker_errors():
            try:
                found: Mapping[str, Any] = self._api.inspect_volume(name)
            except docker.errors.NotFound:
                return None
        return found

    def create(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        # Docker hands back an existing volume of that name instead of failing.
        if self._find(name) is not None:
            raise SandboxExists(f"a docker volume {name!r} exists")
        with docker_errors():
            return self._info(self._api.create_volume(name, driver="local", labels=dict(labels)))

    def inspect(self, name: str) -> VolumeInfo | None:
        found = self._find(name)
        return self._info(found) if found is not None else None

    def list(self) -> list[VolumeInfo]:
        with docker_errors():
            found = self._api.volumes().get("Volumes") or []
        return [self._info(v) for v in found]

    def remove(self, name: str) -> None:
        found = self._find(name)
        if found is None or not is_ours(found.get("Labels") or {}):
            return  # never anyone else's
        with docker_errors(), contextlib.suppress(docker.errors.NotFound):
            self._api.remove_volume(name)

    def claim(self, plan: LaunchPlan) -> None:
        """Give each fresh volume's root to the sandbox's user (a local engine's volume
        directory, as root); elsewhere it stays root's and a non-root user cannot write."""
        if volume_dir_owner(plan.user) is None:
            return
        local = socket_path() is not None and os.geteuid() == 0
        for volume in plan.volumes:
            found = self._find(volume.name) or {}
            if not local or found.get("Driver") != "local":
                logger.warning("docker volume %s: its root stays root's here", volume.name)
                continue
            claim_volume_dir(found["Mountpoint"], plan.user)
