"""Reading one layer blob of an image: decompressed in bounded chunks, hashed and counted
as it is read, and refused whole if its digest or size is not the manifest's."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import attrs

from .._errors import ImagePullFailed

GZIP_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
PLAIN_TYPES = frozenset({"application/vnd.oci.image.layer.v1.tar"})
ZSTD_TYPES = frozenset({"application/vnd.oci.image.layer.v1.tar+zstd"})
CHUNK = 1024 * 1024


class UnsafeImage(ImagePullFailed):
    """An image's layers hold an entry that could reach outside its tree, or pass a bound."""


@attrs.frozen
class Layer:
    """One layer blob of an image, as its manifest describes it."""

    path: Path
    digest: str  # "sha256:<hex>", checked against the blob's content as it is read
    size: int
    media_type: str


def chunks(layer: Layer) -> Iterator[bytes]:
    """The layer's tar bytes, decompressed in bounded chunks; its digest and size are
    checked once it is read to the end (nothing is placed before that)."""
    if layer.media_type in ZSTD_TYPES:
        raise ImagePullFailed(
            f"layer {layer.digest} is zstd-compressed, which sandboxer cannot unpack yet; "
            "push the image with gzip layers (skopeo copy --dest-compress-format gzip)"
        )
    if layer.media_type not in GZIP_TYPES | PLAIN_TYPES:
        raise ImagePullFailed(f"layer {layer.digest} has an unsupported type {layer.media_type!r}")
    raw = _HashingReader(layer)
    with raw:
        source: io.BufferedIOBase | _HashingReader = raw
        if layer.media_type in GZIP_TYPES:
            source = gzip.GzipFile(fileobj=raw, mode="rb")
        try:
            while chunk := source.read(CHUNK):
                yield chunk
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise UnsafeImage(f"layer {layer.digest} is not a valid gzip stream: {exc}") from exc
        raw.check()


class _HashingReader(io.RawIOBase):
    """The compressed blob as a file, hashed and counted as it is read."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self._layer = layer
        self._fd = os.open(layer.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._hash = hashlib.sha256()
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        size = os.readv(self._fd, [buffer])
        self._hash.update(buffer[:size])
        self._read += size
        if self._read > self._layer.size:
            raise UnsafeImage(f"layer {self._layer.digest} is longer than its manifest says")
        return size

    def check(self) -> None:
        """Read what the decompressor left, then compare the digest and the size."""
        scratch = bytearray(CHUNK)
        while self.readinto(memoryview(scratch)):
            pass
        digest = "sha256:" + self._hash.hexdigest()
        if digest != self._layer.digest or self._read != self._layer.size:
            raise UnsafeImage(
                f"layer {self._layer.digest} does not match its digest (its content hashes "
                f"to {digest}, {self._read} bytes); the stored copy is corrupt: remove the "
                "image (sandboxer images rm) and pull it again"
            )

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
