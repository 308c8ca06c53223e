"""Writes images into an OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/`.

The on-disk format skopeo, umoci and podman read (`oci:LAYOUT:TAG`). Several images may
share one layout: each is one entry of `index.json` named by its
`org.opencontainers.image.ref.name` annotation, and adding one keeps the others. Blobs
are content-addressed and written atomically, so a rerun or a crash never leaves a blob
whose name lies about its content.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
PLATFORM = {"architecture": "amd64", "os": "linux"}
# Docker's tag grammar: safe in `oci:LAYOUT:TAG` and in a file name.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_GZIP_LEVEL = 6  # gzip's own default: most of level 9's ratio at a third of its time


@attrs.frozen
class Descriptor:
    """An OCI content descriptor: what a manifest or an index says about a blob."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@attrs.frozen
class Layer:
    blob: Descriptor  # the compressed blob
    diff_id: str  # digest of the uncompressed tar, as the image config lists it


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """One byte string per document, so the same image always gets the same digests."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def blobs_dir(layout: Path) -> Path:
    """Where the layout keeps its sha256 blobs, each named by its hex digest."""
    return layout / "blobs" / "sha256"


def blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return blobs_dir(layout) / hexdigest


def init_layout(layout: Path) -> None:
    """Make `layout` an OCI image layout (an empty one if it was not one yet)."""
    blobs_dir(layout).mkdir(parents=True, exist_ok=True)
    if not (layout / LAYOUT_FILE).exists():
        _write_atomically(layout / LAYOUT_FILE, canonical_json({"imageLayoutVersion": "1.0.0"}))
    if not (layout / INDEX_FILE).exists():
        with _index_lock(layout):
            if not (layout / INDEX_FILE).exists():
                write_index(layout, [])


def write_blob(layout: Path, media_type: str, data: bytes) -> Descriptor:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    target = blob_path(layout, digest)
    if not target.exists():
        _write_atomically(target, data)
    return Descriptor(media_type, digest, len(data))


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it to `sink`."""

    def __init__(self, sink: IO[bytes] | gzip.GzipFile) -> None:
        super().__init__()
        self._sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        self._sink.write(data)
        return memoryview(data).nbytes


def write_gzip_layer(layout: Path, fill: Callable[[tarfile.TarFile], None]) -> Layer:
    """A layer blob holding the tar members `fill` adds to the archive it gets.

    The archive is PAX (it keeps extended attributes and long names), and the gzip
    header carries no name and no time, so the same members give the same blob.
    """
    init_layout(layout)
    with _temporary(blobs_dir(layout)) as (raw, temporary):
        compressed = _Hashing(raw)
        with gzip.GzipFile(
            filename="", mode="wb", compresslevel=_GZIP_LEVEL, fileobj=compressed, mtime=0
        ) as packer:
            uncompressed = _Hashing(packer)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                fill(tar)
        blob = Descriptor(
            LAYER_MEDIA_TYPE, "sha256:" + compressed.sha256.hexdigest(), compressed.size
        )
        _commit(raw, temporary, blob_path(layout, blob.digest))
    return Layer(blob, "sha256:" + uncompressed.sha256.hexdigest())


def add_image(layout: Path, tag: str, config: Mapping[str, Any], layers: list[Layer]) -> Descriptor:
    """Write `config` and a manifest over `layers`, and name it `tag` in the index.

    `config` is the image config without `rootfs`, which is filled in from `layers`.
    An entry already named `tag` is replaced; the other entries stay.
    """
    if not _TAG.fullmatch(tag):
        raise ValueError(f"tag {tag!r} is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9._-]*)")
    init_layout(layout)
    document = {**config, "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]}}
    config_blob = write_blob(layout, CONFIG_MEDIA_TYPE, canonical_json(document))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config_blob.to_json(),
        "layers": [layer.blob.to_json() for layer in layers],
    }
    manifest_blob = write_blob(layout, MANIFEST_MEDIA_TYPE, canonical_json(manifest))
    entry = {**manifest_blob.to_json(), "platform": PLATFORM, "annotations": {REF_NAME: tag}}
    with _index_lock(layout):
        others = [m for m in read_index(layout) if m.get("annotations", {}).get(REF_NAME) != tag]
        write_index(layout, [*others, entry])
    return manifest_blob


def read_index(layout: Path) -> list[dict[str, Any]]:
    """The manifests `index.json` lists."""
    document = json.loads((layout / INDEX_FILE).read_bytes())
    manifests = document.get("manifests", []) if isinstance(document, dict) else None
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        raise ValueError(f"{layout / INDEX_FILE} is not an OCI image index")
    return manifests


def write_index(layout: Path, manifests: list[dict[str, Any]]) -> None:
    """Replace index.json whole; the caller serialises writers."""
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests}
    _write_atomically(layout / INDEX_FILE, canonical_json(index))


@contextlib.contextmanager
def _index_lock(layout: Path) -> Iterator[None]:
    """Serialises read-modify-write of index.json between processes.

    The lock is on the layout directory itself: index.json is replaced by rename, so a
    lock on it would be on a file the next writer no longer sees, and a lock file of our
    own would be a stray file in the layout.
    """
    descriptor = os.open(layout, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _temporary(directory: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A new file in `directory` (same file system as its final name); gone on failure."""
    descriptor, name = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    temporary = Path(name)
    try:
        with os.fdopen(descriptor, "wb") as raw:
            yield raw, temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _commit(raw: IO[bytes], temporary: Path, target: Path) -> None:
    raw.flush()
    os.fsync(raw.fileno())
    os.chmod(temporary, 0o644)
    os.replace(temporary, target)


def _write_atomically(target: Path, data: bytes) -> None:
    with _temporary(target.parent) as (raw, temporary):
        raw.write(data)
        _commit(raw, temporary, target)
