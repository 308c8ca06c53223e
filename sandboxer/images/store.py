"""The image store: OCI images fetched from registries (or built locally), unpacked once
into root file system trees cached by digest, for engines without OCI support of their own.

On disk, under the store's root (SANDBOXER_IMAGE_DIR, default /var/lib/sandboxer/images):

    index.json                 what each reference resolved to, sizes, last use (_cache)
    locks/                     flock files: the index, the OCI layout, one per image
    oci/                       ONE shared OCI layout: images share their common blobs
    images/<hex>/tree/rootfs   the unpacked tree; `tree` is closed to other users, since
                               the image's setuid files must not be reachable on the host
    images/<hex>/derived/NAME  per-engine artifacts built from it (a disk image, ...)

Everything read from the layout is checked: JSON documents are bounded and hashed against
their digest, layers are hashed as they are unpacked, and only linux/amd64 is accepted.
The store's total size is bounded (SANDBOXER_IMAGE_CACHE_MAX, default 20G): the least
recently used images are evicted after each new image or artifact.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from .._errors import EngineError, ImageNotFound, ImagePullFailed, InvalidSpec
from .._extract import remove_tree
from .._units import parse_size
from . import _cache, _oci
from ._fetch import Fetcher, Skopeo
from ._layer_blob import Layer
from ._layers import Limits, remove_scratch, unpack
from .config import ImageConfig
from .reference import ImageReference, parse_reference, printable

logger = logging.getLogger("sandboxer")

# (phase, units done, total units or None)
Progress = Callable[[str, int, int | None], None]

DEFAULT_ROOT = Path("/var/lib/sandboxer/images")
DEFAULT_CACHE_MAX = 20 * 1024**3
DEFAULT_IMAGE_MAX = 8 * 1024**3
PULL_POLICIES = ("missing", "always", "never")

_ARTIFACT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SCRATCH_TAG = "image"  # the name of the one image in a scratch layout


@attrs.frozen
class LocalImage:
    """An image ready on this host: its config and its unpacked root file system."""

    reference: str
    digest: str  # "sha256:<hex>" of its linux/amd64 image manifest
    config: ImageConfig
    rootfs: Path  # root-owned; adapters must never modify it
    size: int  # bytes on disk of `rootfs`
    layout: Path  # an OCI layout holding the image: `oci:{layout}:{layout_tag}`
    layout_tag: str


@attrs.frozen
class StoredImage:
    """One image of `store.list()`."""

    references: tuple[str, ...]
    digest: str
    size: int  # bytes on disk: tree, blobs and derived artifacts
    last_used: float  # seconds since the epoch
    derived: tuple[str, ...]


def default_store() -> ImageStore:
    """The store at SANDBOXER_IMAGE_DIR, bounded by SANDBOXER_IMAGE_CACHE_MAX."""
    return ImageStore(
        Path(os.environ.get("SANDBOXER_IMAGE_DIR") or DEFAULT_ROOT),
        max_bytes=_size_setting("SANDBOXER_IMAGE_CACHE_MAX", DEFAULT_CACHE_MAX),
        max_image_bytes=_size_setting("SANDBOXER_IMAGE_MAX_SIZE", DEFAULT_IMAGE_MAX),
    )


def _size_setting(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        return parse_size(text)
    except ValueError as exc:
        raise InvalidSpec(variable, str(exc)) from None


class ImageStore:
    """Images by reference or digest, fetched, unpacked and evicted under a bound."""

    def __init__(
        self,
        root: Path,
        *,
        fetcher: Fetcher | None = None,
        max_bytes: int = DEFAULT_CACHE_MAX,
        max_image_bytes: int = DEFAULT_IMAGE_MAX,
    ) -> None:
        self.root = Path(os.path.abspath(root))
        self.fetcher: Fetcher = fetcher if fetcher is not None else Skopeo()
        self.max_bytes = max_bytes
        self.limits = Limits(max_bytes=max_image_bytes)
        self.layout = self.root / "oci"

    # -- the public operations -------------------------------------------------------------

    def resolve(
        self, image: str, pull: str = "missing", progress: Progress | None = None
    ) -> LocalImage:
        """The image named `image`, ready on this host.

        A registry reference is fetched as `pull` says: "missing" uses a local copy (a tag
        as it resolved when pulled, a digest by digest), "always" asks the registry again
        and follows a moved tag, "never" never contacts it. A built-in OCI image
        (sandboxer/debian, sandboxer/systemd) is built locally, once per recipe, whatever
        `pull` says: no registry is involved.
        """
        if pull not in PULL_POLICIES:
            raise InvalidSpec("pull", f"expected one of {', '.join(PULL_POLICIES)}, got {pull!r}")
        self._prepare()
        builtin = _builtin_module(image)
        if builtin is not None:
            return self._builtin(image, builtin, progress)
        try:
            reference = parse_reference(image)
        except ValueError as exc:
            raise InvalidSpec("image", str(exc)) from None
        key = str(reference)
        if pull != "always":
            local = self._ready(self._find(key, reference), key, key)
            if local is not None:
                return local
            if pull == "never":
                raise ImageNotFound(
                    f"{key} is not in the image store and pull='never' forbids fetching it\n"
                    f"  fix: pull it first: sandboxer images pull {image}"
                )
        return self._pull(reference, progress)

    def derived(self, image: LocalImage, name: str, build: Callable[[Path], object]) -> Path:
        """The artifact `name` of `image`, built once: `build(path)` makes `path` (a file or
        a directory) and it is renamed into place; later calls return it as it is."""
        if not _ARTIFACT.fullmatch(name):
            raise InvalidSpec(
                "name", f"expected a file name of letters, digits, . _ -, got {name!r}"
            )
        hex_digest = _oci.hex_digest(image.digest)
        folder = self.root / "images" / hex_digest / "derived"
        target = folder / name
        with self._image_lock(hex_digest):
            with self._index() as index:
                entry = index.images.get(image.digest)
                if entry is None:
                    raise ImageNotFound(
                        f"{image.reference} was evicted from the image store; resolve it again"
                    )
                entry.last_used = time.time()
                known = name in entry.derived
            if not known:  # built now, or before a crash that kept it out of the index
                if not target.exists():
                    self._build(folder, name, build)
                size = _cache.disk_usage(target)
                with self._index() as index:
                    entry = index.images.get(image.digest)
                    if entry is not None:
                        entry.derived[name] = size
        self._evict(self.max_bytes, keep=frozenset({image.digest}))
        return target

    @staticmethod
    def _build(folder: Path, name: str, build: Callable[[Path], object]) -> None:
        """Run `build` into a scratch directory, then move its result to folder/name; the
        caller holds the image's lock, so scratch directories left by a crash can go."""
        folder.mkdir(mode=0o711, exist_ok=True)
        for stale in folder.glob(".tmp-*"):
            _remove(stale)
        scratch = folder / f".tmp-{secrets.token_hex(8)}"
        scratch.mkdir(mode=0o700)
        try:
            build(scratch / name)
            os.rename(scratch / name, folder / name)
        finally:
            _remove(scratch)

    def list(self) -> list[StoredImage]:
        """Every stored image, most recently used first."""
        self._prepare()
        with self._index(write=False) as index:
            entries = sorted(index.images.values(), key=lambda e: -e.last_used)
        return [_stored(entry) for entry in entries]

    def remove(self, image_or_digest: str) -> bool:
        """Remove an image, named by a reference it was resolved as or by its digest, with
        its artifacts; False if the store does not hold it."""
        self._prepare()
        with self._index(write=False) as index:
            entry = self._lookup(index, image_or_digest)
        if entry is None:
            return False
        with self._image_lock(_oci.hex_digest(entry.digest)):
            with self._index() as index:
                gone = index.forget(entry.digest)
            if gone is None:
                return False
            self._delete(gone)
        return True

    def prune(self, max_bytes: int | None = None) -> builtins.list[StoredImage]:
        """Evict least recently used images until the store fits `max_bytes` (None: its
        configured bound; 0 removes every image not in use); what was removed."""
        self._prepare()
        bound = self.max_bytes if max_bytes is None else max_bytes
        removed = [_stored(entry) for entry in self._evict(bound, keep=frozenset())]
        self._remove_unindexed()
        return removed

    def _remove_unindexed(self) -> None:
        """Remove image folders the index does not know (a crash between unpacking and
        indexing), unless a resolve is at work on them."""
        with self._index(write=False) as index:
            known = {_oci.hex_digest(digest) for digest in index.images}
        for folder in (self.root / "images").iterdir():
            if folder.name in known or not _oci.DIGEST.fullmatch(f"sha256:{folder.name}"):
                continue
            with self._image_lock(folder.name, wait=False) as free:
                with self._index(write=False) as index:
                    indexed = f"sha256:{folder.name}" in index.images
                if free and not indexed:
                    _remove(folder)

    # -- registry images -------------------------------------------------------------------

    def _pull(self, reference: ImageReference, progress: Progress | None) -> LocalImage:
        key = str(reference)
        # A tag beside a digest means nothing to a registry (skopeo refuses the pair).
        raw = self.fetcher.manifest(
            attrs.evolve(reference, tag=None) if reference.digest else reference
        )
        if reference.digest is not None and _oci.sha256(raw) != reference.digest:
            raise ImagePullFailed(
                f"cannot pull {key}: the registry sent a manifest whose digest is "
                f"{_oci.sha256(raw)}, not the one asked for\n  fix: the registry is corrupt or "
                "tampered with; push the image again"
            )
        document = _oci.parse_json(raw, f"the manifest of {key}")
        if _oci.kind(document) == "index":
            digest = _oci.select_amd64(document, key)
            pinned = attrs.evolve(reference, tag=None, digest=digest)
            raw = self.fetcher.manifest(pinned)
            if _oci.sha256(raw) != digest:
                raise ImagePullFailed(
                    f"cannot pull {key}: the registry sent a linux/amd64 manifest that does "
                    f"not match its digest {digest}\n  fix: push the image again"
                )
            document = _oci.parse_json(raw, f"the manifest of {key}")
        else:
            digest = _oci.sha256(raw)
        source = _oci.image_manifest(document, key)
        compressed = sum(item["size"] for item in source["layers"])
        if compressed > self.limits.max_bytes:
            raise ImagePullFailed(
                f"cannot pull {key}: its layers are {compressed} bytes, over the bound of "
                f"{self.limits.max_bytes}\n  fix: raise SANDBOXER_IMAGE_MAX_SIZE to allow it"
            )
        hex_digest = _oci.hex_digest(digest)
        with self._image_lock(hex_digest):
            with self._index(write=False) as index:
                entry = index.images.get(digest)
            if entry is None or not self._tree(digest).is_dir():
                tag = f"sha256-{hex_digest}"
                pinned = attrs.evolve(reference, tag=None, digest=digest)
                layers = len(source["layers"])
                phase = f"pulling {key}"
                with _cache.flock(self.root / "locks" / "oci.lock"):
                    self.fetcher.copy(
                        pinned,
                        self.layout,
                        tag,
                        layers,
                        None if progress is None else lambda n, t: progress(phase, n, t),
                    )
                entry = self._unpack(key, digest, tag, source, progress)
            return self._use(key, entry)

    # -- built-in images -------------------------------------------------------------------

    def _builtin(self, name: str, module: Any, progress: Progress | None) -> LocalImage:
        """A built-in image, built by its recipe once per version of the recipe."""
        key = f"{name}@recipe:{module.recipe_key(name)}"
        local = self._ready(self._find(key, None), name, key)
        if local is not None:
            return local
        with _cache.flock(self.root / "locks" / f"build-{_oci.sha256(key.encode())[7:23]}.lock"):
            local = self._ready(self._find(key, None), name, key)  # built meanwhile?
            if local is not None:
                return local
            with self._scratch_layout() as scratch:
                module.build_layout(name, scratch, _SCRATCH_TAG, progress)
                return self._adopt(scratch, name, key, progress)

    def import_docker(self, name: str, progress: Progress | None = None) -> LocalImage:
        """Copy the image `name` from the local Docker engine into the store (after a build
        there); `resolve(name)` finds it afterwards without a registry."""
        try:
            key = str(parse_reference(name))
        except ValueError as exc:
            raise InvalidSpec("image", str(exc)) from None
        self._prepare()
        with self._scratch_layout() as scratch:
            self.fetcher.copy_from_docker(key, scratch, _SCRATCH_TAG)
            return self._adopt(scratch, key, key, progress)

    @contextlib.contextmanager
    def _scratch_layout(self) -> Iterator[Path]:
        """A private OCI layout for an image on its way in, removed afterwards. Its lock
        file tells other processes it is in use: those whose lock is free were left by a
        crash, and go."""
        folder = self.root / "tmp"
        folder.mkdir(mode=0o700, exist_ok=True)
        for lock in folder.glob("layout-*.lock"):
            with _cache.flock(lock, wait=False) as free:
                if free:
                    _remove(folder / lock.stem)
                    lock.unlink(missing_ok=True)
        name = f"layout-{secrets.token_hex(8)}"
        with _cache.flock(folder / f"{name}.lock"):
            scratch = folder / name
            scratch.mkdir(mode=0o700)
            try:
                yield scratch
            finally:
                _remove(scratch)
                (folder / f"{name}.lock").unlink(missing_ok=True)

    def _adopt(self, scratch: Path, name: str, key: str, progress: Progress | None) -> LocalImage:
        """Move the image of a scratch layout into the shared one and unpack it; `key`
        means it from now on."""
        digest = _oci.layout_manifest(scratch, _SCRATCH_TAG)
        tag = f"sha256-{_oci.hex_digest(digest)}"
        with self._image_lock(_oci.hex_digest(digest)):
            with self._index(write=False) as index:
                entry = index.images.get(digest)
            if entry is None or not self._tree(digest).is_dir():
                with _cache.flock(self.root / "locks" / "oci.lock"):
                    _oci.merge_layout(scratch, _SCRATCH_TAG, self.layout, tag)
                document = _oci.parse_json(
                    _oci.read_blob(self.layout, digest), f"the manifest of {name}"
                )
                entry = self._unpack(
                    name, digest, tag, _oci.image_manifest(document, name), progress
                )
            return self._use(name, entry, key)

    # -- unpacking -------------------------------------------------------------------------

    def _unpack(
        self,
        name: str,
        digest: str,
        tag: str,
        source: dict[str, Any],
        progress: Progress | None,
    ) -> _cache.Entry:
        """Read the image `tag` from the layout, check it against `source` (the manifest the
        registry sent) and unpack it; the caller holds the image's lock. An image refused
        here leaves nothing: its entry in the layout goes too."""
        try:
            manifest, config = self._checked(name, digest, tag, source)
            tree = self._tree(digest).parent
            tree.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(tree.parent, 0o711)
            remove_scratch(tree)
            _remove(tree / "rootfs")  # a tree unpacked before a crash, never indexed
            layers = [
                Layer(
                    path=_oci.blob_path(self.layout, item["digest"]),
                    digest=item["digest"],
                    size=item["size"],
                    media_type=item["mediaType"],
                )
                for item in manifest["layers"]
            ]
            phase = f"unpacking {name}"
            if progress is not None:
                progress(phase, 0, len(layers))
            unpack(
                layers,
                tree,
                "rootfs",
                self.limits,
                None if progress is None else lambda n: progress(phase, n, len(layers)),
            )
        except BaseException:
            with self._index() as index:
                index.forget(digest)
            with _cache.flock(self.root / "locks" / "oci.lock"):
                _oci.drop_from_layout(self.layout, tag)
            raise
        blobs = sum(item["size"] for item in manifest["layers"]) + manifest["config"]["size"]
        entry = _cache.Entry(
            digest=digest,
            references=[],
            layout_tag=tag,
            config=config.to_json(),
            rootfs_size=_cache.disk_usage(tree / "rootfs"),
            blobs_size=blobs,
            last_used=time.time(),
        )
        with self._index() as index:
            index.images[digest] = entry
        self._evict(self.max_bytes, keep=frozenset({digest}))
        return entry

    def _checked(
        self, name: str, digest: str, tag: str, source: dict[str, Any]
    ) -> tuple[dict[str, Any], ImageConfig]:
        """The manifest the layout holds as `tag`, checked against `source`, and its config."""
        with _cache.flock(self.root / "locks" / "oci.lock", exclusive=False):
            stored_digest = _oci.layout_manifest(self.layout, tag)
        manifest = _oci.stored_manifest(self.layout, stored_digest, name)
        # skopeo converts a Docker manifest (and its config) to OCI; the layers stay the same.
        if stored_digest != digest and (
            source.get("mediaType") != _oci.DOCKER_MANIFEST
            or _oci.layer_digests(manifest) != _oci.layer_digests(source)
        ):
            raise ImagePullFailed(
                f"cannot pull {name}: the stored image is not the one its manifest {digest} "
                f"describes\n  fix: pull it again"
            )
        document = _oci.parse_json(
            _oci.read_blob(self.layout, manifest["config"]["digest"]), f"the config of {name}"
        )
        platform = (document.get("os"), document.get("architecture"))
        if platform != ("linux", "amd64"):
            raise ImagePullFailed(
                f"cannot use {name}: it is built for "
                f"{printable(f'{platform[0]}/{platform[1]}')}; only "
                "linux/amd64 images run here\n  fix: push a linux/amd64 image"
            )
        try:
            config = ImageConfig.from_oci(document)
        except ValueError as exc:
            raise ImagePullFailed(f"cannot use {name}: its config is malformed: {exc}") from exc
        if os.geteuid() != 0:
            raise ImagePullFailed(
                f"cannot unpack {name}: the image store unpacks as root, to keep the owners "
                "of the image's files\n  fix: run as root (or use the docker backend)"
            )
        return manifest, config

    # -- the index, locks and eviction -----------------------------------------------------

    def _prepare(self) -> None:
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        # Checked before anything is made in it: others able to write here (or choose where
        # a symlinked root points) could plant links where the store writes as root.
        info = os.lstat(self.root)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
            raise EngineError(
                f"the image store {self.root} must be a directory of this user (uid "
                f"{os.geteuid()}) that no one else may write to\n  fix: chown "
                f"{os.geteuid()} {self.root} && chmod go-w {self.root}, or set "
                "SANDBOXER_IMAGE_DIR to another directory"
            )
        (self.root / "locks").mkdir(mode=0o700, exist_ok=True)
        (self.root / "images").mkdir(mode=0o711, exist_ok=True)
        self.layout.mkdir(mode=0o700, exist_ok=True)

    def _tree(self, digest: str) -> Path:
        return self.root / "images" / _oci.hex_digest(digest) / "tree" / "rootfs"

    @contextlib.contextmanager
    def _index(self, write: bool = True) -> Iterator[_cache.Index]:
        """The index, under its lock; saved when the block ends if `write`."""
        with _cache.flock(self.root / "locks" / "index.lock", exclusive=write):
            index = _cache.load(self.root / "index.json")
            yield index
            if write:
                _cache.save(self.root / "index.json", index)

    def _image_lock(
        self, hex_digest: str, wait: bool = True
    ) -> contextlib.AbstractContextManager[bool]:
        return _cache.flock(self.root / "locks" / f"{hex_digest}.lock", wait=wait)

    def _find(self, key: str, reference: ImageReference | None) -> _cache.Entry | None:
        with self._index(write=False) as index:
            entry = index.find(key)
            if entry is None and reference is not None and reference.digest is not None:
                entry = index.images.get(reference.digest)
            return entry

    def _lookup(self, index: _cache.Index, text: str) -> _cache.Entry | None:
        if _oci.DIGEST.fullmatch(text):
            return index.images.get(text)
        entry = index.find(text)
        if entry is None:
            with contextlib.suppress(ValueError):
                entry = index.find(str(parse_reference(text)))
        return entry

    def _ready(self, entry: _cache.Entry | None, name: str, key: str) -> LocalImage | None:
        """`entry` in use, if its tree is still there (checked under its lock: an eviction
        either waits for the lock or has removed the tree)."""
        if entry is None:
            return None
        with self._image_lock(_oci.hex_digest(entry.digest)):
            return self._use(name, entry, key) if self._tree(entry.digest).is_dir() else None

    def _use(self, name: str, entry: _cache.Entry, key: str | None = None) -> LocalImage:
        """Record that `name` and `key` (a built-in's recipe version) mean `entry`, mark it
        used, and describe it; the caller holds the image's lock."""
        with self._index() as index:
            current = index.images.get(entry.digest, entry)
            current.last_used = time.time()
            for alias in dict.fromkeys((name, key or name)):
                index.record(alias, current)
        return LocalImage(
            reference=name,
            digest=entry.digest,
            config=ImageConfig.from_oci({"config": entry.config}),
            rootfs=self._tree(entry.digest),
            size=entry.rootfs_size,
            layout=self.layout,
            layout_tag=entry.layout_tag,
        )

    def _evict(self, bound: int, keep: frozenset[str]) -> builtins.list[_cache.Entry]:
        """Remove least recently used images until the store fits `bound`; an image whose
        lock another process holds (a resolve or derive at work) is passed over."""
        removed: builtins.list[_cache.Entry] = []
        busy = set(keep)
        while True:
            with self._index(write=False) as index:
                chosen = _cache.victims(index, bound, frozenset(busy))
            if not chosen:
                return removed
            victim = chosen[0]
            with self._image_lock(_oci.hex_digest(victim.digest), wait=False) as free:
                if not free:
                    busy.add(victim.digest)
                    continue
                with self._index() as index:
                    gone = index.forget(victim.digest)
                if gone is not None:
                    logger.info("image store: evicting %s (%d bytes)", victim.digest, gone.size)
                    self._delete(gone)
                    removed.append(gone)
                busy.add(victim.digest)

    def _delete(self, entry: _cache.Entry) -> None:
        """Remove an image's files: its tree, artifacts, and blobs no other image uses."""
        _remove(self.root / "images" / _oci.hex_digest(entry.digest))
        with _cache.flock(self.root / "locks" / "oci.lock"):
            _oci.drop_from_layout(self.layout, entry.layout_tag)


def _builtin_module(image: str) -> Any:
    """sandboxer.images.debian if `image` is one of its built-in OCI images, else None."""
    if not image.startswith("sandboxer/"):
        return None
    from . import debian  # imported lazily: it runs mmdebstrap, only for these images

    return debian if image in debian.BUILTIN_OCI_IMAGES else None


def _stored(entry: _cache.Entry) -> StoredImage:
    return StoredImage(
        references=tuple(entry.references),
        digest=entry.digest,
        size=entry.size,
        last_used=entry.last_used,
        derived=tuple(sorted(entry.derived)),
    )


def _remove(path: Path) -> None:
    """Delete `path` and everything under it, following no link."""
    with contextlib.suppress(FileNotFoundError):
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                remove_tree(parent, path.name)
            else:
                os.unlink(path.name, dir_fd=parent)
        finally:
            os.close(parent)


__all__ = [
    "DEFAULT_CACHE_MAX",
    "DEFAULT_IMAGE_MAX",
    "DEFAULT_ROOT",
    "PULL_POLICIES",
    "ImageStore",
    "LocalImage",
    "Progress",
    "StoredImage",
    "default_store",
]
