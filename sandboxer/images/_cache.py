"""The store's index of images (what each reference resolved to, sizes, last use), its
locks, and the least-recently-used choice of what to evict under the disk bound.

Several processes may use one store at once: every change to the index happens under an
exclusive flock, written to a new file and renamed over the old one, so a reader never
sees half an index. Each image has its own lock, held while a resolve or derive works on
it; eviction only takes images whose lock it gets without waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from .._errors import EngineError

_MAX_INDEX = 64 * 1024 * 1024  # the index is ours, but a bound costs nothing


@attrs.define
class Entry:
    """One stored image, as the index records it."""

    digest: str
    references: list[str]
    layout_tag: str
    config: dict[str, Any]
    rootfs_size: int = 0  # bytes on disk of the unpacked tree
    blobs_size: int = 0  # bytes of its blobs in the shared layout (shared ones counted each time)
    derived: dict[str, int] = attrs.Factory(dict)  # artifact name -> bytes on disk
    last_used: float = 0.0

    @property
    def size(self) -> int:
        return self.rootfs_size + self.blobs_size + sum(self.derived.values())


@attrs.define
class Index:
    images: dict[str, Entry] = attrs.Factory(dict)  # digest -> entry
    tags: dict[str, str] = attrs.Factory(dict)  # reference or built-in key -> digest

    def find(self, key: str) -> Entry | None:
        digest = self.tags.get(key)
        return None if digest is None else self.images.get(digest)

    def record(self, key: str, entry: Entry) -> None:
        """`key` (a reference as written, or a built-in's key) now means `entry`."""
        previous = self.find(key)
        if previous is not None and previous.digest != entry.digest:  # a tag that moved
            previous.references = [ref for ref in previous.references if ref != key]
        self.tags[key] = entry.digest
        self.images[entry.digest] = entry
        if key not in entry.references:
            entry.references.append(key)

    def forget(self, digest: str) -> Entry | None:
        for key in [k for k, d in self.tags.items() if d == digest]:
            del self.tags[key]
        return self.images.pop(digest, None)

    def total(self) -> int:
        return sum(entry.size for entry in self.images.values())


def load(path: Path) -> Index:
    """The index at `path` (an empty one if there is none yet)."""
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_INDEX + 1)
    except FileNotFoundError:
        return Index()
    try:
        if len(data) > _MAX_INDEX:
            raise ValueError(f"over {_MAX_INDEX} bytes")
        return _parse(json.loads(data))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EngineError(
            f"the image store's index {path} is corrupt ({exc!r})\n"
            f"  fix: remove the store (rm -r {path.parent}); images are fetched again"
        ) from exc


def _parse(document: Any) -> Index:
    images = {
        digest: Entry(
            digest=digest,
            references=list(item["references"]),
            layout_tag=item["layout_tag"],
            config=dict(item["config"]),
            rootfs_size=int(item["rootfs_size"]),
            blobs_size=int(item["blobs_size"]),
            derived={str(k): int(v) for k, v in item["derived"].items()},
            last_used=float(item["last_used"]),
        )
        for digest, item in document["images"].items()
    }
    tags = {str(k): str(v) for k, v in document["tags"].items() if v in images}
    return Index(images=images, tags=tags)


def save(path: Path, index: Index) -> None:
    document = {
        "images": {
            digest: attrs.asdict(entry, filter=lambda field, _: field.name != "digest")
            for digest, entry in index.images.items()
        },
        "tags": index.tags,
    }
    scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with open(scratch, "x", encoding="utf-8") as file:
        json.dump(document, file, indent=1, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(scratch, path)


@contextlib.contextmanager
def flock(path: Path, exclusive: bool = True, wait: bool = True) -> Iterator[bool]:
    """Hold a flock on the file `path` (made as needed); yields False if `wait` is False
    and another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def victims(index: Index, bound: int, keep: frozenset[str] = frozenset()) -> list[Entry]:
    """The least recently used images to evict, oldest first, until the rest fit `bound`
    (images in `keep` are never chosen, so the result may not be enough)."""
    total = index.total()
    chosen = []
    for entry in sorted(index.images.values(), key=lambda e: e.last_used):
        if total <= bound:
            break
        if entry.digest in keep:
            continue
        chosen.append(entry)
        total -= entry.size
    return chosen


def disk_usage(path: Path) -> int:
    """Bytes on disk under `path` (allocated blocks, each inode once), following no link."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0
    seen = {(top.st_dev, top.st_ino)}
    total = top.st_blocks * 512
    if not os.path.isdir(path) or os.path.islink(path):
        return total
    for directory, dirs, files in os.walk(path):
        for name in dirs + files:
            info = os.lstat(os.path.join(directory, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total
