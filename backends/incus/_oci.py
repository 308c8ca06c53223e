"""OCI images on Incus: an image of the store (`sandboxer.images.store`) converted once
per digest.

Incus 6.0 has no OCI remotes, so the store's unpacked tree is streamed to Incus as a
unified tarball (metadata.yaml, templates/, rootfs/): measured, sandboxes are created
from it faster than from a split squashfs image (0.5-0.8 s against 1.2-3.4 s for
sandboxer/debian on a dir pool). GNU tar writes the tree: symlinks
stay symlinks (the tree is image content, never followed on the host), hard links stay
links, owners are numeric, and modes, setuid bits and file capabilities (xattrs) are kept.
The image is aliased `sandboxer/oci/<digest hex[:16]>` and records its digest in its
properties: a second launch finds it by the alias, trusts it only if that digest is the
one asked for, and converts nothing; `converted()` and `remove(digest)` find every
copy. A lock (in-process and on the host) makes concurrent first launches convert once;
another host racing us is settled by the alias, as for the built-in images.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from sandboxer.backend import EngineError, logger, timed
from sandboxer.images.helper import MOUNT_POINT
from sandboxer.images.store import LocalImage, default_store

from ._client import Incus
from ._errors import incus_errors
from ._metadata import TEMPLATES, TEMPLATES_REVISION, metadata_yaml, template_files
from ._sdk import pylxd

ALIAS_PREFIX = "sandboxer/oci/"
DIGEST_PROPERTY = "sandboxer.digest"
_IMPORT_SECONDS = 600.0
_CHUNK = 1024 * 1024


def alias(digest: str) -> str:
    """The digest's copy made with this revision of the templates."""
    return f"{ALIAS_PREFIX}{digest.removeprefix('sha256:')[:16]}.r{TEMPLATES_REVISION}"


def _kind(path: Path) -> int | None:
    try:
        return stat.S_IFMT(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None


def safe_templates(rootfs: Path) -> dict[str, str]:
    """The templates Incus may render into this tree. Incus writes a template's target
    from the host, so none whose path is a symlink (image content) or lacks /etc."""
    if _kind(rootfs / "etc") != stat.S_IFDIR:
        return {}
    return {
        path: template
        for path, template in TEMPLATES.items()
        if _kind(rootfs / path.lstrip("/")) in (None, stat.S_IFREG)
    }


def _members(files: dict[str, bytes], directories: tuple[str, ...], created: float) -> bytes:
    """Tar members with no end-of-archive blocks: GNU tar's archive follows them."""
    parts = []
    for name in directories:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(created)
        parts.append(info.tobuf(tarfile.GNU_FORMAT))
    for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, int(created)
        padding = -len(data) % tarfile.BLOCKSIZE
        parts += [info.tobuf(tarfile.GNU_FORMAT), data, bytes(padding)]
    return b"".join(parts)


def tarball_command(rootfs: Path) -> list[str]:
    """GNU tar writing `rootfs` as rootfs/..., without the helper's mount point."""
    return [
        "tar", "--create", "--file=-", "--numeric-owner", "--xattrs", "--xattrs-include=*",
        "--anchored", f"--exclude=.{MOUNT_POINT}", "--directory", str(rootfs),
        # S: symlink targets are the image's own, never renamed.
        "--transform", r"s,^\.,rootfs,S", ".",
    ]  # fmt: skip


def tarball(image: LocalImage, head: bytes) -> Iterator[bytes]:
    """`head` (metadata and templates), then the tree; EngineError if tar fails."""
    yield head
    # stderr to a file: a pipe nobody reads while stdout streams could block tar.
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            tarball_command(image.rootfs), stdout=subprocess.PIPE, stderr=errors
        )
        assert process.stdout is not None
        try:
            while chunk := process.stdout.read(_CHUNK):
                yield chunk
            process.wait(timeout=_IMPORT_SECONDS)
        finally:
            if process.poll() is None:  # the upload stopped early: so does tar
                process.kill()
                process.wait()
            process.stdout.close()
        if process.returncode != 0:
            errors.seek(0)
            text = errors.read(64 * 1024).decode("utf-8", "replace").strip()
            raise EngineError(f"packing image {image.reference} for Incus failed: {text}")


def head(image: LocalImage, created: float) -> bytes:
    """metadata.yaml, the templates, and the helper's mount point (so that a read-only
    root needs nothing made before the sandbox starts)."""
    templates = safe_templates(image.rootfs)
    files = {"metadata.yaml": metadata_yaml(created, describe(image), templates)}
    files.update(template_files(templates))
    return _members(files, ("rootfs", "rootfs" + MOUNT_POINT), created)


def describe(image: LocalImage) -> dict[str, str]:
    """The Incus image properties of a converted image."""
    return {
        "description": f"sandboxer: {image.reference}"[:200],
        "os": "oci",
        "release": image.digest.removeprefix("sha256:")[:16],
        DIGEST_PROPERTY: image.digest,
    }


class Converter:
    """Incus copies of store images, one per digest."""

    def __init__(self, incus: Incus) -> None:
        self._incus = incus
        self._lock = threading.Lock()

    def fingerprint(self, image: LocalImage) -> str:
        """The fingerprint of `image`'s Incus copy, converted first if missing."""
        name = alias(image.digest)
        found = self._verified(name, image.digest)
        if found is not None:
            return found
        with self._lock, _host_lock(image.digest):
            return self._verified(name, image.digest) or self._import(image, name)

    def _verified(self, name: str, digest: str) -> str | None:
        """The image the alias `name` points to, if it is a copy of `digest`: an alias is
        only a name (stale, or made by anyone who may make aliases); the copy's properties
        say which image it is."""
        target = self._lookup(name)
        if target is None:
            return None
        with incus_errors():
            try:
                metadata = self._incus.api.images[target].get().json()["metadata"]
            except pylxd.exceptions.NotFound:
                return None
        if (metadata.get("properties") or {}).get(DIGEST_PROPERTY) == digest:
            return target
        logger.warning("Incus alias %s names an image other than %s: not used", name, digest)
        return None

    def _lookup(self, name: str) -> str | None:
        with incus_errors():
            try:
                metadata = self._incus.api.images.aliases[name].get().json()["metadata"]
            except pylxd.exceptions.NotFound:
                return None
        return str(metadata["target"])

    def _import(self, image: LocalImage, name: str) -> str:
        started = time.monotonic()
        with timed("incus image import (OCI)", image=image.reference), incus_errors():
            logger.info("converting %s (%s) for Incus (first use)", image.reference, name)
            body = tarball(image, head(image, time.time()))
            response = self._incus.api.images.post(
                data=body, headers={"Content-Type": "application/octet-stream"}
            )
            fingerprint = str(
                self._incus.wait(response, _IMPORT_SECONDS)["metadata"]["fingerprint"]
            )
        logger.info("converted %s in %.1f s", image.reference, time.monotonic() - started)
        try:
            with incus_errors():
                self._incus.api.images.aliases.post(
                    json={"name": name, "target": fingerprint, "description": image.reference}
                )
        except EngineError as exc:
            if "already exists" not in str(exc):
                raise
            theirs = self._verified(name, image.digest)
            if theirs is None:  # a name for another image: it names ours from now on
                with incus_errors():
                    self._incus.api.images.aliases[name].put(
                        json={"target": fingerprint, "description": image.reference}
                    )
            elif theirs != fingerprint:  # another host imported first: use theirs, drop ours
                with incus_errors():
                    self._incus.wait(self._incus.api.images[fingerprint].delete())
                return theirs
        return fingerprint

    def converted(self) -> list[str]:
        """The digests of every converted image Incus holds."""
        return sorted({digest for digest, _ in self._images()})

    def remove(self, digest: str) -> bool:
        """Delete every Incus copy of `digest`; whether there was one."""
        found = [fingerprint for theirs, fingerprint in self._images() if theirs == digest]
        for fingerprint in found:
            with contextlib.suppress(pylxd.exceptions.NotFound), incus_errors():
                self._incus.wait(self._incus.api.images[fingerprint].delete())
        return bool(found)

    def _images(self) -> list[tuple[str, str]]:
        with incus_errors():
            images = self._incus.api.images.get(params={"recursion": 1}).json()["metadata"]
        return [
            (str(image["properties"][DIGEST_PROPERTY]), str(image["fingerprint"]))
            for image in images
            if DIGEST_PROPERTY in (image.get("properties") or {})
        ]


@contextlib.contextmanager
def _host_lock(digest: str) -> Iterator[None]:
    """One conversion of `digest` at a time on this host, beside the store's own locks."""
    locks = default_store().root / "locks"
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = locks / f"incus-{digest.removeprefix('sha256:')[:16]}.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
