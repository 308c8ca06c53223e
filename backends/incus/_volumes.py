"""Named volumes as Incus custom storage volumes in the sandboxes' pool.

Hardened sandboxes each have an isolated id map, so one volume is seen by several maps:
every volume is made with `security.shifted=true`, which Incus mounts idmapped (the
kernel shifts ids per container) and stores unshifted. A fresh volume's root is then
given to the sandbox's uid on the host (`claim_volume_dir`), where the daemon is local.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

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

from ._client import Incus
from ._config import labels_config, labels_from_config
from ._errors import incus_errors
from ._sdk import pylxd

# Incus keeps a custom volume of the default project at POOL/custom/default_NAME.
_PROJECT = "default"


class IncusVolumes(VolumeDriver):
    """Custom volumes in the pool `pool()` names (the sandboxes' root disk pool)."""

    def __init__(self, incus: Incus, pool: Callable[[], str]) -> None:
        self._incus = incus
        self._pool = pool

    def _api(self) -> Any:
        return self._incus.api.storage_pools[quote(self._pool(), safe="")].volumes

    def _info(self, found: Mapping[str, Any]) -> VolumeInfo:
        return VolumeInfo("incus", found["name"], labels_from_config(found.get("config") or {}))

    def _find(self, name: str) -> Mapping[str, Any] | None:
        with incus_errors():
            try:
                found: Mapping[str, Any] = self._api().custom[name].get().json()["metadata"]
            except pylxd.exceptions.NotFound:
                return None
        return found

    def create(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        if self._find(name) is not None:
            raise SandboxExists(f"an incus volume {name!r} exists in pool {self._pool()}")
        config = {**labels_config(labels), "security.shifted": "true"}
        body = {"name": name, "type": "custom", "content_type": "filesystem", "config": config}
        with incus_errors():
            self._incus.wait(self._api().post(json=body))
        return VolumeInfo("incus", name, dict(labels))

    def inspect(self, name: str) -> VolumeInfo | None:
        found = self._find(name)
        return self._info(found) if found is not None else None

    def list(self) -> list[VolumeInfo]:
        with incus_errors():
            found = self._api().get(params={"recursion": 1}).json()["metadata"]
        return [self._info(v) for v in found if v.get("type") == "custom"]

    def remove(self, name: str) -> None:
        found = self._find(name)
        if found is None or not is_ours(labels_from_config(found.get("config") or {})):
            return  # never anyone else's
        with incus_errors(), contextlib.suppress(pylxd.exceptions.NotFound):
            self._incus.wait(self._api().custom[name].delete())

    def claim(self, plan: LaunchPlan, pool: str) -> None:
        """Give each fresh volume's root to the sandbox's user (a local daemon's pool)."""
        if volume_dir_owner(plan.user) is None or not plan.volumes:
            return
        endpoint = self._incus.endpoint
        if not endpoint.is_local:
            logger.warning("incus volumes of a remote daemon keep a root-owned root")
            return
        custom = Path(endpoint.address).parent / "storage-pools" / pool / "custom"
        for volume in plan.volumes:
            claim_volume_dir(str(custom / f"{_PROJECT}_{volume.name}"), plan.user)
