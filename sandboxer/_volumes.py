"""`Volume`: named engine volumes that outlive the sandboxes mounting them.

Ours carry `ownership_labels()` like sandboxes do. They go only when asked
(`Volume.remove`, `sandboxer volume rm`, `gc_volumes(all_unused=True)`), or, made with
`ephemeral=True`, once their owner process has exited. One still mounted by a sandbox
of ours is never removed: the error names the sandbox.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence

import attrs

from ._backend import Backend, LaunchPlan, SandboxInfo, VolumeInfo
from ._engine_objects import available_engines, engine_named, sandboxes_using, user_labels
from ._errors import InvalidSpec, SandboxError, SandboxExists, SandboxNotFound
from ._labels import EPHEMERAL, VOLUMES, is_ours, ownership_labels
from ._log import logger, timed
from ._models import check_volume_name
from ._registry import get_backend
from .ownership import labels_owner_alive


class VolumeInUse(SandboxError):
    """A volume still mounted by a sandbox is not removed."""


@attrs.frozen
class Volume:
    """A named volume on one engine; `labels` include sandboxer's own."""

    name: str
    backend: str
    labels: Mapping[str, str] = attrs.field(factory=dict, eq=False)

    @property
    def ephemeral(self) -> bool:
        return self.labels.get(EPHEMERAL) == "true"

    @classmethod
    def create(
        cls,
        name: str,
        *,
        backend: str,
        labels: Mapping[str, str] | None = None,
        ephemeral: bool = False,
    ) -> Volume:
        """Create the volume `name` on `backend`, labelled as ours; SandboxExists if taken.
        `ephemeral`: gc removes it once this process has exited."""
        check_volume_name("name", name)
        wanted = user_labels(labels)
        if not isinstance(ephemeral, bool):
            raise InvalidSpec("ephemeral", f"expected True or False, got {ephemeral!r}")
        engine = engine_named(backend)
        own = {**wanted, **ownership_labels(), **({EPHEMERAL: "true"} if ephemeral else {})}
        with timed("create_volume", backend=backend, volume=name):
            return cls._of(engine.volumes().create(name, own))

    @classmethod
    def get(cls, name: str, backend: str) -> Volume:
        """The volume `name` on `backend`, ours or not; SandboxNotFound if there is none."""
        check_volume_name("name", name)
        found = engine_named(backend).volumes().inspect(name)
        if found is None:
            raise SandboxNotFound(f"no volume {name!r} on {backend}")
        return cls._of(found)

    @classmethod
    def list(
        cls, backend: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Volume]:
        """Our volumes on `backend` (default: every available engine), carrying `labels`."""
        wanted = user_labels(labels)
        found = [cls._of(info) for info in _volumes(backend) if is_ours(info.labels)]
        return [v for v in found if all(v.labels.get(k) == x for k, x in wanted.items())]

    @property
    def ours(self) -> bool:
        return is_ours(self.labels)

    def users(self) -> builtins.list[str]:
        """Names of our sandboxes on this engine that mount this volume."""
        return [
            info.name
            for info in sandboxes_using(self.backend, "volumes")
            if self.name in _mounted(info)
        ]

    def remove(self) -> None:
        """Remove this volume: only one of ours, and only while no sandbox mounts it."""
        engine = engine_named(self.backend)
        current = engine.volumes().inspect(self.name)
        if current is None:
            return
        if not is_ours(current.labels):
            raise InvalidSpec(
                "volume",
                f"{self.backend} volume {self.name!r} was not made by sandboxer: "
                "remove it with the engine's own tools",
            )
        users = self.users()
        if users:
            raise VolumeInUse(
                f"volume {self.name!r} is mounted by sandbox {', '.join(users)} on "
                f"{self.backend}: remove the sandbox first"
            )
        with timed("remove_volume", backend=self.backend, volume=self.name):
            engine.volumes().remove(self.name)

    @classmethod
    def _of(cls, info: VolumeInfo) -> Volume:
        return cls(info.name, info.backend, dict(info.labels))


def _volumes(backend: str | None) -> list[VolumeInfo]:
    if backend is not None:
        return engine_named(backend).volumes().list()
    return [info for name in available_engines() for info in get_backend(name).volumes().list()]


def _mounted(info: SandboxInfo) -> list[str]:
    return [name for name in info.labels.get(VOLUMES, "").split(",") if name]


def ensure_volumes(backend: Backend, plan: LaunchPlan) -> None:
    """Create each volume `plan` mounts that does not exist yet, labelled as ours (as
    `docker run -v NAME:/path` does); it then outlives the sandbox like any volume."""
    for name in sorted({v.name for v in plan.volumes}):
        if backend.volumes().inspect(name) is not None:
            continue
        logger.info("creating volume %s on %s for %s", name, backend.name, plan.name)
        try:
            with timed("create_volume", backend=backend.name, volume=name):
                backend.volumes().create(name, ownership_labels())
        except SandboxExists:
            pass  # made meanwhile by a concurrent launch: that is the one to mount


def gc_volumes(
    *, all_unused: bool = False, backends: Sequence[str] | None = None, dry_run: bool = False
) -> list[Volume]:
    """Remove our volumes that no sandbox of ours mounts: with `all_unused`, every one;
    else only ephemeral ones whose owner process has exited (`sandboxer gc` does this
    after `gc()`). Never anything without our labels. Returns what was (with `dry_run`:
    would be) removed."""
    removed = []
    for backend in backends if backends is not None else available_engines():
        engine_named(backend)
        in_use = {name for info in sandboxes_using(backend, "volumes") for name in _mounted(info)}
        for info in get_backend(backend).volumes().list():
            volume = Volume._of(info)
            if not volume.ours or volume.name in in_use:
                continue
            if not all_unused and not (
                volume.ephemeral and labels_owner_alive(volume.labels) is False
            ):
                continue
            if not dry_run:
                logger.info("gc: removing volume %s on %s", volume.name, backend)
                get_backend(backend).volumes().remove(volume.name)
            removed.append(volume)
    return removed
