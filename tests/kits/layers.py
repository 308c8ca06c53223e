"""Image layers built in a test: blobs written to a folder, unpacked into tree/rootfs,
beside a folder outside the tree that hostile layers aim at."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from sandboxer.images._layer_blob import GZIP_TYPES, Layer, UnsafeImage
from sandboxer.images._layers import Limits, unpack

GZIP = sorted(GZIP_TYPES)[0]
PLAIN = "application/vnd.oci.image.layer.v1.tar"
Entry = tuple[tarfile.TarInfo, bytes]


def tar_bytes(*entries: Entry) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


class LayerKit:
    def __init__(self, tmp_path: Path) -> None:
        self.blobs = tmp_path / "blobs"
        self.blobs.mkdir()
        self.parent = tmp_path / "tree"
        self.parent.mkdir()
        self.rootfs = self.parent / "rootfs"
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        (self.outside / "passwd").write_text("host\n")

    def blob(self, data: bytes, media_type: str) -> Layer:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blobs / digest[7:]
        path.write_bytes(data)
        return Layer(path=path, digest=digest, size=len(data), media_type=media_type)

    def raw(self, data: bytes) -> Layer:
        """A gzip layer of an uncompressed tar stream given as is."""
        return self.blob(gzip.compress(data, mtime=0), GZIP)

    def layer(self, *entries: Entry, compress: bool = True) -> Layer:
        data = tar_bytes(*entries)
        return self.raw(data) if compress else self.blob(data, PLAIN)

    def unpack(self, *layers: Layer, limits: Limits | None = None) -> Path:
        unpack(layers, self.parent, "rootfs", limits or Limits(max_bytes=1 << 30))
        return self.rootfs

    def refused(self, *layers: Layer, match: str, limits: Limits | None = None) -> None:
        """The unpack fails and leaves nothing behind in the parent."""
        with pytest.raises(UnsafeImage, match=match):
            self.unpack(*layers, limits=limits)
        assert os.listdir(self.parent) == [], "a refused image left a tree behind"

    def outside_untouched(self) -> None:
        assert os.listdir(self.outside) == ["passwd"]
        assert (self.outside / "passwd").read_text() == "host\n"
        assert (self.outside / "passwd").stat().st_nlink == 1
