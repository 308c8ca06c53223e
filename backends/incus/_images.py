"""Images on Incus, by kind of name.

- `sandboxer/minimal` and `sandboxer/system`: one busybox image with two aliases, imported
  from the shared busybox tree on first use; every sandbox boots its /sbin/init. Aliases
  carry IMAGE_VERSION, so a new version imports afresh.
- Images of the store (`sandboxer/debian`, `sandboxer/systemd`, and registry references):
  converted once per digest (`_oci`), booted by sandboxer's helper init (`_boot`).
- Any other name is first looked up in Incus (an alias or a fingerprint it holds, which
  boots its own init, as before); only if Incus has no such image does it go to the
  store. A reference that names a registry host (`127.0.0.1:5000/app`, `docker.io/x`)
  or a digest always goes to the store: it cannot mean an Incus alias.
A lock makes concurrent first imports happen once; a second process that races us is
settled by whoever creates the alias first.
"""

from __future__ import annotations

import io
import tarfile
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import attrs

from sandboxer.backend import ImageNotFound, LaunchPlan, UnsupportedFeature, logger, timed
from sandboxer.images import (
    BUILTIN_IMAGES,
    IMAGE_VERSION,
    ROOTFS_DIRECTORIES,
    build_rootfs_tar,
    is_builtin,
    parse_reference,
)
from sandboxer.images.debian import BUILTIN_OCI_IMAGES
from sandboxer.images.store import LocalImage, default_store
from sandboxer.images.systemd import boots_systemd
from sandboxer.images.tree import is_directory_in_tree

from . import _boot, _metadata
from ._boot import Boot, Init
from ._client import Incus
from ._errors import incus_errors
from ._metadata import TEMPLATES_REVISION
from ._oci import Converter
from ._sdk import pylxd

SYSTEM_IMAGE = "sandboxer/system"

# The Incus metadata's revision (its templates); the tree's own version is IMAGE_VERSION.
INCUS_REVISION = TEMPLATES_REVISION


def alias(image: str) -> str:
    return f"{image}:{IMAGE_VERSION}.{INCUS_REVISION}"


def unified_tarball(replace: Mapping[str, bytes] | None = None) -> bytes:
    """metadata.yaml, templates/ and rootfs/: the single-file image format Incus imports.

    `replace` swaps files of the tree (later tar members win when Incus unpacks).
    """
    buffer = io.BytesIO(build_rootfs_tar(prefix="rootfs/"))
    with tarfile.open(fileobj=buffer, mode="a") as tar:
        now = time.time()
        properties = {
            "description": f"sandboxer built-in busybox image, version {IMAGE_VERSION}",
            "os": "sandboxer",
            "release": f"{IMAGE_VERSION}.{INCUS_REVISION}",
        }
        files = {"metadata.yaml": _metadata.metadata_yaml(now, properties, _metadata.TEMPLATES)}
        files.update({f"rootfs/{path.lstrip('/')}": data for path, data in (replace or {}).items()})
        files.update(_metadata.template_files(_metadata.TEMPLATES))
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(now)
            info.mode = 0o755 if name.startswith("rootfs/") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def in_store(image: str) -> bool:
    """Names that can only mean an image of the store: its built-ins, and references
    that name a registry host or a digest (never an Incus alias)."""
    if image in BUILTIN_OCI_IMAGES:
        return True
    try:
        reference = parse_reference(image)
    except ValueError:
        return False
    return reference.pinned or image.split("/", 1)[0] == reference.registry


@attrs.frozen
class Source:
    """What a sandbox is created from: an Incus fingerprint and, for an image of the store,
    that image (its config and tree)."""

    fingerprint: str
    oci: LocalImage | None = None
    builtin: bool = False

    def boot(self, plan: LaunchPlan) -> Boot:
        if self.oci is not None:
            return (
                _boot.own(plan, self.oci) if boots_systemd(plan) else _boot.helper(plan, self.oci)
            )
        if self.builtin:
            return _boot.builtin(plan)
        if plan.command or plan.entrypoint:
            raise UnsupportedFeature(
                f"image {plan.image!r} of Incus boots its own init, which runs no spec.command "
                "or spec.entrypoint: exec the command instead"
            )
        return _boot.own(plan, None)

    def exists(self, path: str) -> bool:
        """Whether the image has directory `path`, as far as can be told on the host."""
        if self.oci is not None:
            return is_directory_in_tree(self.oci.rootfs, path)
        return self.builtin and path.rstrip("/") in ROOTFS_DIRECTORIES


class Images:
    def __init__(self, incus: Incus) -> None:
        self._incus = incus
        self._lock = threading.Lock()
        self._fingerprints: dict[str, str] = {}
        self._converter = Converter(incus)

    @property
    def converter(self) -> Converter:
        return self._converter

    def init(self, plan: LaunchPlan) -> Init:
        """Which init `plan`'s sandbox boots (an image Incus holds is looked up once)."""
        image = image_name(plan)
        if is_builtin(image):
            return Init.BUILTIN
        if boots_systemd(plan):
            return Init.OWN
        return Init.HELPER if self._from_store(image) else Init.OWN

    def from_store(self, image: str) -> bool:
        """Whether `image` is an OCI image of sandboxer's store (else one Incus holds)."""
        return self._from_store(image)

    def _from_store(self, image: str) -> bool:
        return in_store(image) or not self.held_by_incus(image)

    def source(self, plan: LaunchPlan) -> Source:
        """The image to create `plan`'s sandbox from, imported or converted if missing."""
        image = image_name(plan)
        if is_builtin(image):
            return Source(self.fingerprint(image), builtin=True)
        if self._from_store(image):
            local = default_store().resolve(image, str(plan.pull.value))
            return Source(self._converter.fingerprint(local), local)
        return Source(self.fingerprint(image))

    def held_by_incus(self, image: str) -> bool:
        """Whether Incus holds `image` as an alias or fingerprint (remembered once seen)."""
        if image not in self._fingerprints:
            found = self._lookup(image)
            if found is None:
                return False
            self._fingerprints[image] = found
        return True

    def fingerprint(self, image: str) -> str:
        """The fingerprint of a built-in or an image Incus holds; built-ins are imported
        here if missing."""
        known = self._fingerprints.get(image)
        if known is not None:
            return known
        if not is_builtin(image):
            return self._lookup(image) or self._missing(image)
        with self._lock:
            found = self._lookup(alias(image)) or self._import()
            self._fingerprints[image] = found
        return found

    def forget(self, image: str) -> None:
        self._fingerprints.pop(image, None)

    def _missing(self, image: str) -> str:
        raise ImageNotFound(
            f"no image {image!r} on Incus (an alias or fingerprint; import one with "
            "`incus image import`)"
        )

    def _lookup(self, name: str) -> str | None:
        """The fingerprint behind an alias or a fingerprint, or None."""
        api, quoted = self._incus.api, quote(name, safe="")
        with incus_errors():
            for node in (api.images.aliases[quoted], api.images[quoted]):
                try:
                    metadata = node.get().json()["metadata"]
                except pylxd.exceptions.NotFound:
                    continue
                return str(metadata.get("target") or metadata["fingerprint"])
        return None

    def _import(self) -> str:
        with timed("incus image import", version=IMAGE_VERSION), incus_errors():
            logger.info("importing the built-in images, version %s (first use)", IMAGE_VERSION)
            image: Any = self._incus.client.images.create(
                unified_tarball(), public=False, wait=True
            )
            fingerprint = str(image.fingerprint)
            for index, name in enumerate(BUILTIN_IMAGES):
                try:
                    self._incus.api.images.aliases.post(
                        json={
                            "name": alias(name),
                            "target": fingerprint,
                            "description": f"sandboxer built-in {name}",
                        }
                    )
                except pylxd.exceptions.LXDAPIException as exc:
                    if "already exists" not in str(exc):
                        raise
                    theirs = self._lookup(alias(name))
                    if index == 0 and theirs and theirs != fingerprint:
                        # Another process imported first: use theirs, drop ours.
                        image.delete(wait=True)
                        return theirs
        return fingerprint


def image_name(plan: LaunchPlan) -> str:
    """The image to create from: a system image where an init was asked for."""
    requirements = plan.requirements
    if plan.image == "sandboxer/minimal" and (requirements.init or requirements.kind == "system"):
        return SYSTEM_IMAGE
    return plan.image
