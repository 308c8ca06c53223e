"""Images on Incus: the built-in ones imported from the shared busybox tree on first use.

`sandboxer/minimal` and `sandboxer/system` are one image with two aliases: on Incus
every sandbox boots the tree's /sbin/init as PID 1. Aliases carry IMAGE_VERSION, so a
new version imports afresh. A lock makes concurrent first launches import once; a
second process that races us is settled by whoever creates the alias first.
"""

from __future__ import annotations

import io
import platform
import tarfile
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from sandboxer.backend import ImageNotFound, LaunchPlan, logger, timed
from sandboxer.images import BUILTIN_IMAGES, IMAGE_VERSION, build_rootfs_tar, is_builtin

from ._client import Incus
from ._config import ADDRESS_KEY
from ._errors import incus_errors
from ._sdk import pylxd

_ARCHITECTURES = {"amd64": "x86_64", "arm64": "aarch64"}
SYSTEM_IMAGE = "sandboxer/system"


# Bump when the Incus metadata (templates) changes; the tree's own version is IMAGE_VERSION.
INCUS_REVISION = 1
# Rendered by Incus at first start: the sandbox's name resolves to its address.
_TEMPLATES = {
    "/etc/hosts": (
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
        '{{ config_get("' + ADDRESS_KEY + '", "127.0.1.1") }} {{ instance.name }}\n'
    ),
    "/etc/hostname": "{{ instance.name }}\n",
}


def alias(image: str) -> str:
    return f"{image}:{IMAGE_VERSION}.{INCUS_REVISION}"


def metadata_yaml(created: float) -> bytes:
    machine = platform.machine().lower()
    return (
        f"architecture: {_ARCHITECTURES.get(machine, machine)}\n"
        f"creation_date: {int(created)}\n"
        "properties:\n"
        f"  description: sandboxer built-in busybox image, version {IMAGE_VERSION}\n"
        "  os: sandboxer\n"
        f"  release: '{IMAGE_VERSION}.{INCUS_REVISION}'\n"
        "templates:\n"
        + "".join(
            f"  {path}:\n    when: [create, copy]\n    template: {_template_name(path)}\n"
            for path in _TEMPLATES
        )
    ).encode()


def _template_name(path: str) -> str:
    return path.strip("/").replace("/", "-") + ".tpl"


def unified_tarball(replace: Mapping[str, bytes] | None = None) -> bytes:
    """metadata.yaml, templates/ and rootfs/: the single-file image format Incus imports.

    `replace` swaps files of the tree (later tar members win when Incus unpacks).
    """
    buffer = io.BytesIO(build_rootfs_tar(prefix="rootfs/"))
    with tarfile.open(fileobj=buffer, mode="a") as tar:
        now = time.time()
        files = {"metadata.yaml": metadata_yaml(now)}
        files.update({f"rootfs/{path.lstrip('/')}": data for path, data in (replace or {}).items()})
        files.update({f"templates/{_template_name(p)}": t.encode() for p, t in _TEMPLATES.items()})
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), int(now)
            info.mode = 0o755 if name.startswith("rootfs/") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Images:
    def __init__(self, incus: Incus) -> None:
        self._incus = incus
        self._lock = threading.Lock()
        self._fingerprints: dict[str, str] = {}

    def fingerprint(self, image: str) -> str:
        """The fingerprint to create from; built-in images are imported here if missing."""
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
