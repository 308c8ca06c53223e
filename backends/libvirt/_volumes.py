"""Named volumes for VMs: host directories shared over virtio-9p.

A volume is ROOT/NAME (root's, 0700) holding `labels.json` and `data/`, the directory
the guests mount. Several VMs may mount one volume at once (a directory share is safe
to share, unlike a block device). QEMU opens `data/` as its own user and shares it with
accessmode "mapped": what a guest creates is stored as QEMU's files (0600/0700 on the
host, out of other host users' reach) with the guest's owner and mode in xattrs, so the
guest sees its own ids. At a volume's first use its root gets the sandbox user's ids
in those xattrs, so a hardened guest (uid 1000) can write it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path

import attrs

from sandboxer.backend import (
    LaunchPlan,
    SandboxExists,
    VolumeDriver,
    VolumeInfo,
    is_ours,
    volume_dir_owner,
)

from ._guest_config import Share

LABELS_FILE = "labels.json"
DATA = "data"
_LABELS_MAX = 256 * 1024
# QEMU's mapped-xattr attributes (little-endian 32-bit ids).
_UID_XATTR = "user.virtfs.uid"
_GID_XATTR = "user.virtfs.gid"


class LibvirtVolumes(VolumeDriver):
    def __init__(self, root: Path) -> None:
        self._root = root

    def _ensure_root(self) -> None:
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._root.chmod(0o700)

    def create(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        # Built aside and renamed into place: nobody ever sees a volume without labels.
        self._ensure_root()
        building = self._root / f".new-{uuid.uuid4().hex}"
        building.mkdir(mode=0o700)
        try:
            (building / DATA).mkdir(mode=0o700)
            (building / LABELS_FILE).write_text(json.dumps(dict(labels)))
            try:
                os.rename(building, self._root / name)
            except OSError as exc:  # ENOTEMPTY or EEXIST: the name is taken
                raise SandboxExists(f"a libvirt volume {name!r} exists") from exc
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return VolumeInfo("libvirt", name, dict(labels))

    def inspect(self, name: str) -> VolumeInfo | None:
        directory = self._root / name
        if name.startswith(".") or not directory.is_dir() or directory.is_symlink():
            return None
        return VolumeInfo("libvirt", name, _read_labels(directory / LABELS_FILE))

    def list(self) -> list[VolumeInfo]:
        if not self._root.is_dir():
            return []
        found = (self.inspect(entry) for entry in sorted(os.listdir(self._root)))
        return [info for info in found if info is not None]

    def remove(self, name: str) -> None:
        info = self.inspect(name)
        if info is None or not is_ours(info.labels):
            return  # never anyone else's
        # Moved aside first: a launch from now on no longer finds it half deleted.
        trash = self._root / f".gone-{uuid.uuid4().hex}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(self._root / name, trash)
            shutil.rmtree(trash)  # does not follow the links a guest planted

    def shares(self, found: tuple[Share, ...]) -> tuple[Share, ...]:
        """`found` with each volume's share sourced at its data directory."""
        return tuple(
            attrs.evolve(s, source=str(self._root / s.volume / DATA)) if s.volume else s
            for s in found
        )

    def prepare(self, plan: LaunchPlan, qemu: tuple[int, int] | None) -> None:
        """Make each volume's data directory QEMU's (`qemu`: its uid and gid; None: root),
        and at first use give its root the sandbox user's ids as the guest sees them."""
        owner = volume_dir_owner(plan.user)
        for volume in plan.volumes:
            fd = os.open(
                self._root / volume.name / DATA, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            )
            try:
                status = os.fstat(fd)
                if qemu is not None and (status.st_uid, status.st_gid) != qemu:
                    os.fchown(fd, *qemu)
                if owner is not None and not os.listdir(fd) and _UID_XATTR not in os.listxattr(fd):
                    os.setxattr(fd, _UID_XATTR, struct.pack("<I", owner[0]))
                    os.setxattr(fd, _GID_XATTR, struct.pack("<I", owner[1]))
            finally:
                os.close(fd)


def _read_labels(path: Path) -> dict[str, str]:
    """A volume's labels; {} (not ours) when missing, a link, too big or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        text = f.read(_LABELS_MAX + 1)
    try:
        labels = json.loads(text) if len(text) <= _LABELS_MAX else {}
    except ValueError:
        return {}
    if not isinstance(labels, dict):
        return {}
    return {str(k): str(v) for k, v in labels.items()}
