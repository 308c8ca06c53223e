"""OCI documents and the store's OCI layout, read with bounds and checked.

Manifests, indexes and configs are JSON of at most MAX_DOCUMENT bytes, hashed against
their digest when read from the layout; descriptors are checked before use; only the
layer types the unpacker reads are accepted. The layout's index.json is changed by
replacing it whole, by callers that hold the store's layout lock; where the layout keeps
what is `_layout`'s to say.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from .._errors import ImagePullFailed
from ._layer_blob import GZIP_TYPES, PLAIN_TYPES, ZSTD_TYPES
from ._layout import INDEX_FILE, blobs_dir, init_layout, write_index
from .reference import printable

MAX_DOCUMENT = 4 * 1024 * 1024
MAX_LAYERS = 128
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_REF_NAME = "org.opencontainers.image.ref.name"
_MAX_LAYOUT_INDEX = 16 * 1024 * 1024

logger = logging.getLogger("sandboxer")


def hex_digest(digest: str) -> str:
    match = DIGEST.fullmatch(digest)
    if match is None:
        raise ImagePullFailed(f"{digest!r} is not a sha256 digest")
    return match.group(1)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ImagePullFailed(f"{what} is missing from the image store: {exc}") from exc
    with os.fdopen(fd, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ImagePullFailed(f"{what} is over {limit} bytes")
    return data


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ImagePullFailed(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ImagePullFailed(f"{what} is not a JSON object")
    return document


def kind(document: dict[str, Any]) -> str:
    """Whether `document` is an "index" or a "manifest" (OCI ones may omit mediaType)."""
    if document.get("schemaVersion") != 2:
        raise ImagePullFailed(
            "the image has a schema 1 (or unknown) manifest, which sandboxer does not read\n"
            "  fix: push it again with a current docker, podman or skopeo"
        )
    media_type = document.get("mediaType")
    if media_type in (_OCI_INDEX, _DOCKER_LIST) or (media_type is None and "manifests" in document):
        return "index"
    if media_type in (_OCI_MANIFEST, DOCKER_MANIFEST) or (
        media_type is None and "layers" in document
    ):
        return "manifest"
    raise ImagePullFailed(f"the registry sent an unknown kind of manifest ({media_type!r})")


def select_amd64(index: dict[str, Any], name: str) -> str:
    """The digest of the linux/amd64 image of a multi-arch index."""
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise ImagePullFailed(f"the index of {name} has no list of manifests")
    platforms = []
    for item in entries:
        platform = item.get("platform") if isinstance(item, dict) else None
        if not isinstance(platform, dict):
            continue
        # Shown in the error: the registry's text, bounded and with no terminal escapes.
        platforms.append(printable(f"{platform.get('os')}/{platform.get('architecture')}"[:64]))
        if (platform.get("os"), platform.get("architecture")) == ("linux", "amd64"):
            digest = item.get("digest")
            if isinstance(digest, str) and DIGEST.fullmatch(digest):
                return digest
    raise ImagePullFailed(
        f"cannot pull {name}: it has no linux/amd64 image (only "
        f"{', '.join(platforms[:16]) or 'none'}{', ...' if len(platforms) > 16 else ''})"
        "\n  fix: push a linux/amd64 image under this name"
    )


def _descriptor(item: Any, what: str) -> dict[str, Any]:
    if not (
        isinstance(item, dict)
        and isinstance(item.get("digest"), str)
        and DIGEST.fullmatch(item["digest"])
        and isinstance(item.get("size"), int)
        and item["size"] >= 0
        and isinstance(item.get("mediaType"), str)
    ):
        raise ImagePullFailed(f"{what} is not a valid descriptor")
    return item


def image_manifest(document: dict[str, Any], name: str) -> dict[str, Any]:
    """An image manifest, its descriptors checked; ImagePullFailed otherwise."""
    if kind(document) != "manifest":
        raise ImagePullFailed(f"the manifest of {name} is an index, not an image")
    _descriptor(document.get("config"), f"the config descriptor of {name}")
    layers = document.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise ImagePullFailed(f"{name} must have a list of at most {MAX_LAYERS} layers")
    for number, item in enumerate(layers, 1):
        layer = _descriptor(item, f"layer {number} of {name}")
        if layer["mediaType"] in ZSTD_TYPES:
            raise ImagePullFailed(
                f"{name} has zstd-compressed layers, which sandboxer cannot unpack yet\n"
                "  fix: push it with gzip layers (skopeo copy --dest-compress-format gzip)"
            )
        if layer["mediaType"] not in GZIP_TYPES | PLAIN_TYPES:
            raise ImagePullFailed(f"layer {number} of {name} has the type {layer['mediaType']!r}")
    return document


def layer_digests(manifest: dict[str, Any]) -> list[tuple[str, int]]:
    """The layers' digests and sizes (what a format conversion keeps)."""
    return [(item["digest"], item["size"]) for item in manifest["layers"]]


def _layout_index(layout: Path) -> dict[str, Any]:
    path = layout / INDEX_FILE
    if not path.exists():
        return {"schemaVersion": 2, "manifests": []}
    document = parse_json(_read_bounded(path, _MAX_LAYOUT_INDEX, str(path)), str(path))
    if not isinstance(document.get("manifests"), list):
        raise ImagePullFailed(f"{path} has no list of manifests")
    return document


def layout_manifest(layout: Path, tag: str) -> str:
    """The digest of the manifest that the layout names `tag`."""
    for item in _layout_index(layout)["manifests"]:
        if _ref_name(item) == tag:
            return str(_descriptor(item, f"the layout's entry {tag!r}")["digest"])
    raise ImagePullFailed(f"the image store's OCI layout has no image named {tag!r}")


def merge_layout(source: Path, source_tag: str, layout: Path, tag: str) -> None:
    """Move the image `source_tag` of the layout `source` into `layout` (which the caller
    has locked) under the name `tag`. Its blobs are checked when they are read."""
    init_layout(layout)
    blobs = blobs_dir(layout)
    for entry in blobs_dir(source).iterdir():
        if re.fullmatch(r"[0-9a-f]{64}", entry.name) and not (blobs / entry.name).exists():
            os.rename(entry, blobs / entry.name)
    document = _layout_index(layout)
    document["manifests"] = [item for item in document["manifests"] if _ref_name(item) != tag]
    for item in _layout_index(source)["manifests"]:
        if _ref_name(item) == source_tag:
            document["manifests"].append({**item, "annotations": {_REF_NAME: tag}})
    write_index(layout, document["manifests"])


def _ref_name(item: Any) -> Any:
    annotations = item.get("annotations") if isinstance(item, dict) else None
    return annotations.get(_REF_NAME) if isinstance(annotations, dict) else None


def drop_from_layout(layout: Path, tag: str) -> None:
    """Forget `tag` in the layout (which the caller has locked), and delete the blobs that
    no other image in it uses. The layout is ours: an entry or a manifest that cannot be
    read keeps every blob (a leak, never a loss)."""
    if not (layout / INDEX_FILE).exists():
        return
    document = _layout_index(layout)
    kept = [item for item in document["manifests"] if _ref_name(item) != tag]
    document["manifests"] = kept
    write_index(layout, document["manifests"])
    used = set()
    try:
        for item in kept:
            manifest = stored_manifest(layout, _descriptor(item, "an entry")["digest"], "an image")
            for child in [item, manifest["config"], *manifest["layers"]]:
                used.add(hex_digest(child["digest"]))
    except ImagePullFailed as exc:
        logger.warning("image store: keeping every blob of %s: %s", layout, exc)
        return
    for blob in blobs_dir(layout).iterdir():
        if blob.name not in used and not blob.name.startswith("."):
            blob.unlink()


def blob_path(layout: Path, digest: str) -> Path:
    return blobs_dir(layout) / hex_digest(digest)


def read_blob(layout: Path, digest: str) -> bytes:
    """A JSON blob of the layout, bounded and checked against its digest."""
    data = _read_bounded(blob_path(layout, digest), MAX_DOCUMENT, f"blob {digest}")
    if sha256(data) != digest:
        raise ImagePullFailed(
            f"the stored blob {digest} does not match its digest\n"
            "  fix: remove the image (sandboxer images rm) and pull it again"
        )
    return data


def stored_manifest(layout: Path, digest: str, name: str) -> dict[str, Any]:
    """The image manifest `digest` of the layout, checked."""
    return image_manifest(parse_json(read_blob(layout, digest), f"the manifest of {name}"), name)
