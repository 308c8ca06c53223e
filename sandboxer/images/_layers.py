"""Applying an image's layers, hostile tar streams, to a fresh tree on the host.

tarfile.extractall is never used. Every entry is made relative to a directory descriptor
opened with O_NOFOLLOW|O_DIRECTORY, inside a scratch directory that only this process
writes to, which is renamed into place once every layer is in and verified: a crash or a
refusal leaves no half tree. So a symlink that an earlier member or layer planted
(`a -> /etc`, then `a/passwd`) stands in the way instead of being followed: an entry whose
parent is not a real directory of the tree is refused. Symlinks themselves are made as
the image says (their targets mean something inside the sandbox only) and never read.

What the layers may hold: directories, regular files, symlinks, hard links to entries
already in the tree, FIFOs, and OCI whiteouts (`.wh.NAME` removes NAME of the lower
layers; `.wh..wh..opq` empties its directory of them). Ownership (numeric ids), modes
with setuid/setgid/sticky, file capabilities and mtimes are kept. Device nodes are
skipped with a warning: engines give a sandbox its own /dev, and a node in a tree on the
host is a door to a host device. A leading `/` is stripped from names, as Docker does;
`..` components and NUL bytes are refused. Sizes, member counts, name lengths and depths
are bounded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import attrs

from .._errors import EngineError
from .._extract import MAX_DEPTH, MAX_PATH, remove_tree
from .._output import TarStream, members
from ._layer_blob import CHUNK, Layer, UnsafeImage, chunks

logger = logging.getLogger("sandboxer")

_MAX_ID = 2**32 - 2  # chown takes -1 (2**32 - 1) as "leave as is"
_MAX_MTIME = 2**34  # seconds either side of 1970 (to year 2514): past any real image
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CAPABILITY_RECORD = "SCHILY.xattr.security.capability"
_MAX_CAPABILITY = 64  # a vfs_cap_data is 20 or 24 bytes
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
# A fifo is opened (never read) only to set its mode through the descriptor.
_FIFO_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


@attrs.frozen
class Limits:
    """Bounds on what an image may unpack to."""

    max_bytes: int  # all regular files' data, over every layer
    max_members: int = 1_000_000  # entries over every layer
    max_member_size: int | None = None  # one file's data; None: max_bytes


def unpack(
    layers: Sequence[Layer],
    parent: Path,
    name: str,
    limits: Limits,
    on_layer: Callable[[int], None] | None = None,
) -> None:
    """Apply `layers` in order to a fresh tree and rename it to parent/name (which must not
    exist). `on_layer(n)` is called after each of them; UnsafeImage on a hostile layer."""
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        scratch = ".new-" + secrets.token_hex(8)
        os.mkdir(scratch, 0o700, dir_fd=parent_fd)
        try:
            root_fd = os.open(scratch, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                tree = _Tree(root_fd, limits)
                for number, layer in enumerate(layers, 1):
                    tree.apply(layer)
                    if on_layer is not None:
                        on_layer(number)
                tree.finish()
            finally:
                os.close(root_fd)
            os.rename(scratch, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(parent_fd, scratch)
            raise
    finally:
        os.close(parent_fd)


def remove_scratch(parent: Path) -> None:
    """Remove what an interrupted unpack left in `parent` (the caller holds the image lock)."""
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for entry in os.listdir(parent_fd):
            if entry.startswith(".new-"):
                remove_tree(parent_fd, entry)
    finally:
        os.close(parent_fd)


def _parts(name: str, what: str) -> tuple[str, ...]:
    """The components of a member name, leading '/' stripped as Docker does."""
    if "\0" in name:
        raise UnsafeImage(f"{what}: entry {name[:100]!r} holds a NUL byte")
    if len(os.fsencode(name)) > MAX_PATH:
        raise UnsafeImage(f"{what}: entry {name[:100]!r}... is over {MAX_PATH} bytes long")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeImage(f"{what}: entry {name[:200]!r} has a '..' component")
    if len(parts) > MAX_DEPTH:
        raise UnsafeImage(f"{what}: entry {name[:100]!r}... is over {MAX_DEPTH} levels deep")
    return parts


class _Tree:
    """The scratch tree being filled, reached only through descriptors."""

    def __init__(self, root: int, limits: Limits) -> None:
        self.root = root
        self.limits = limits
        self.members = 0
        self.bytes = 0
        # Directory metadata is set last: adding entries changes mtimes.
        self.dirs: dict[tuple[str, ...], tuple[int, float]] = {(): (0o755, time.time())}
        self.what = ""
        # This layer's entries and the directories their paths imply: its whiteouts hide
        # lower layers only, whatever their order in the tar (OCI image spec).
        self.this_layer: set[tuple[str, ...]] = set()
        self.implied: set[tuple[str, ...]] = set()

    def apply(self, layer: Layer) -> None:
        self.what = f"layer {layer.digest}"
        self.this_layer, self.implied = set(), set()
        stream = TarStream(chunks(layer), self.what)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in members(tar, stream):
                    self._count(member)
                    self._check_mtime(member)
                    self._add(tar, member)
            stream.drain()
        except tarfile.TarError as exc:
            raise UnsafeImage(f"{self.what} is not a valid tar archive: {exc}") from exc
        except UnsafeImage:
            raise
        except EngineError as exc:  # the tar stream's own bounds
            raise UnsafeImage(str(exc)) from exc
        except OSError as exc:
            raise UnsafeImage(f"{self.what} could not be unpacked: {exc}") from exc

    def _count(self, member: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise UnsafeImage(
                f"{self.what}: the image holds over {self.limits.max_members} entries"
            )
        if not member.isreg():
            return
        single = self.limits.max_member_size or self.limits.max_bytes
        if member.size > single:
            raise UnsafeImage(
                f"{self.what}: {member.name[:100]!r} is {member.size} bytes, over the "
                f"bound of {single} for one file"
            )
        self.bytes += member.size
        if self.bytes > self.limits.max_bytes:
            raise UnsafeImage(
                f"{self.what}: the image unpacks to over {self.limits.max_bytes} bytes "
                "(raise SANDBOXER_IMAGE_MAX_SIZE to allow more)"
            )

    def _check_mtime(self, member: tarfile.TarInfo) -> None:
        """A pax mtime is any decimal (tarfile reads "1e400" as inf, "nan" as nan) and a
        base-256 one any integer: refused past what utime and ext4 take, never an
        OverflowError or ValueError out of the unpacker."""
        if not -_MAX_MTIME <= member.mtime <= _MAX_MTIME:  # False for nan too
            raise UnsafeImage(
                f"{self.what}: {member.name[:100]!r} has an invalid mtime {member.mtime!r}"
            )

    @contextlib.contextmanager
    def directory(self, parts: Sequence[str], create: bool) -> Iterator[int | None]:
        """A descriptor of the directory `parts`, made as needed when `create`, never
        reached through a link; None if it does not exist and not `create`."""
        fd = os.dup(self.root)
        try:
            for part in parts:
                try:
                    child = self._open_or_make(fd, part, create)
                except FileNotFoundError:
                    # None is yielded after the handler: an error in the caller's block
                    # must not show this one as its context.
                    break
                except OSError as exc:  # a symlink or a file stands in the way
                    raise UnsafeImage(
                        f"{self.what}: {'/'.join(parts)!r} is not a directory of the tree "
                        f"({exc.strerror}); entries under a symlink are refused"
                    ) from exc
                os.close(fd)
                fd = child
            else:
                yield fd
                return
            yield None
        finally:
            os.close(fd)

    @staticmethod
    def _open_or_make(fd: int, name: str, create: bool) -> int:
        """The directory `name` in `fd`, made first (root-owned, 0755) if `create`."""
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=fd)
        return os.open(name, _DIR_FLAGS, dir_fd=fd)

    def _add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _parts(member.name, self.what)
        if not parts:  # the root itself: its metadata, as for any directory
            if member.isdir():
                self.dirs[()] = (member.mode & 0o7777, member.mtime)
                os.chown(self.root, *self._ids(member))
            return
        name = parts[-1]
        if name.startswith(_WHITEOUT):
            self._whiteout(parts)
            return
        if member.ischr() or member.isblk():
            logger.warning("%s: skipping the device node %r", self.what, member.name)
            return
        with self.directory(parts[:-1], create=True) as fd:
            assert fd is not None
            existing = _lstat(fd, name)
            if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
                _remove(fd, name, existing)
            self.this_layer.add(parts)
            for depth in range(len(parts) - 1, 0, -1):  # deepest first: stop at a known one
                if parts[:depth] in self.implied:
                    break
                self.implied.add(parts[:depth])
            if member.isdir():
                self._directory(member, fd, name, parts)
            elif member.isreg():
                self._file(tar, member, fd, name)
            elif member.issym():
                os.symlink(member.linkname, name, dir_fd=fd)
                self._own(member, fd, name)
            elif member.islnk():
                self._hard_link(member, fd, name)
            elif member.isfifo():
                os.mkfifo(name, 0o600, dir_fd=fd)
                fifo = os.open(name, _FIFO_FLAGS, dir_fd=fd)
                try:
                    os.fchown(fifo, *self._ids(member))
                    os.fchmod(fifo, member.mode & 0o7777)
                finally:
                    os.close(fifo)
                self._own(member, fd, name, chown=False)
            else:
                raise UnsafeImage(f"{self.what}: {member.name!r} has an unknown type")

    def _ids(self, member: tarfile.TarInfo) -> tuple[int, int]:
        if not (0 <= member.uid <= _MAX_ID and 0 <= member.gid <= _MAX_ID):
            raise UnsafeImage(f"{self.what}: {member.name!r} has an invalid owner")
        return member.uid, member.gid

    def _own(self, member: tarfile.TarInfo, fd: int, name: str, chown: bool = True) -> None:
        """Owner and mtime of a link or fifo, set on the entry itself."""
        if chown:
            os.chown(name, *self._ids(member), dir_fd=fd, follow_symlinks=False)
        os.utime(name, (member.mtime, member.mtime), dir_fd=fd, follow_symlinks=False)

    def _directory(
        self, member: tarfile.TarInfo, fd: int, name: str, parts: tuple[str, ...]
    ) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=fd)
        made = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            os.fchown(made, *self._ids(member))
        finally:
            os.close(made)
        self.dirs[parts] = (member.mode & 0o7777, member.mtime)

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int, name: str) -> None:
        source = tar.extractfile(member)
        assert source is not None  # regular members always have content
        out = os.open(name, _NEW_FILE, 0o600, dir_fd=fd)
        try:
            while chunk := source.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            os.fchown(out, *self._ids(member))  # before the mode: chown clears set-id bits
            os.fchmod(out, member.mode & 0o7777)
            self._capabilities(member, out)
            os.utime(out, (member.mtime, member.mtime))
        finally:
            os.close(out)

    def _capabilities(self, member: tarfile.TarInfo, fd: int) -> None:
        """File capabilities (as `setcap` gave them, e.g. ping's cap_net_raw), which Docker
        keeps too; other extended attributes mean nothing to a sandbox and are dropped."""
        value = member.pax_headers.get(_CAPABILITY_RECORD)
        if value is None:
            return
        data = value.encode("utf-8", "surrogateescape")  # tarfile's decoding of binary records
        if len(data) > _MAX_CAPABILITY:
            raise UnsafeImage(f"{self.what}: {member.name!r} has an oversized capability set")
        try:
            os.setxattr(fd, "security.capability", data)
        except OSError as exc:  # malformed: the kernel checks the format
            raise UnsafeImage(
                f"{self.what}: {member.name!r} has invalid capabilities: {exc}"
            ) from exc

    def _hard_link(self, member: tarfile.TarInfo, fd: int, name: str) -> None:
        target = _parts(member.linkname, self.what)
        missing = UnsafeImage(
            f"{self.what}: {member.name!r} is a hard link to {member.linkname!r}, "
            "which is not in the tree"
        )
        if not target:
            raise missing
        with self.directory(target[:-1], create=False) as source:
            info = None if source is None else _lstat(source, target[-1])
            if source is None or info is None or stat.S_ISDIR(info.st_mode):
                raise missing
            os.link(target[-1], name, src_dir_fd=source, dst_dir_fd=fd, follow_symlinks=False)

    def _whiteout(self, parts: tuple[str, ...]) -> None:
        """Remove what lower layers put at the whited-out name (never this layer's own)."""
        name = parts[-1]
        with self.directory(parts[:-1], create=False) as fd:
            if fd is None:
                return  # nothing below to hide
            if name == _OPAQUE:
                self._hide_children(fd, parts[:-1])
                return
            hidden = name[len(_WHITEOUT) :]
            if hidden.startswith(_WHITEOUT):  # aufs metadata (.wh..wh.plnk): nothing to do
                logger.debug("%s: ignoring %r", self.what, "/".join(parts))
                return
            if hidden in ("", ".", ".."):
                raise UnsafeImage(f"{self.what}: the whiteout {'/'.join(parts)!r} names no entry")
            self._hide(fd, hidden, (*parts[:-1], hidden))

    def _hide(self, fd: int, name: str, parts: tuple[str, ...]) -> None:
        """Remove the lower layers' entry `parts` (named `name` in `fd`); a directory that
        this layer listed, or implied by an entry under it, keeps this layer's entries."""
        existing = _lstat(fd, name)
        if existing is None:
            return
        if not stat.S_ISDIR(existing.st_mode):
            if parts not in self.this_layer:
                _remove(fd, name, existing)
            return
        if parts not in self.this_layer and parts not in self.implied:
            _remove(fd, name, existing)
            return
        child_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
        try:
            self._hide_children(child_fd, parts)
        finally:
            os.close(child_fd)

    def _hide_children(self, fd: int, parts: tuple[str, ...]) -> None:
        for child in os.listdir(fd):
            self._hide(fd, child, (*parts, child))

    def finish(self) -> None:
        """Directory modes and mtimes, deepest first (a read-only directory is filled first)."""
        for parts, (mode, mtime) in sorted(self.dirs.items(), key=lambda item: -len(item[0])):
            with self.directory(parts[:-1], create=False) as parent:
                if parent is None:
                    continue  # removed by a later layer
                try:
                    fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent) if parts else os.dup(parent)
                except OSError:
                    continue  # replaced by a later layer with something else
                try:
                    os.fchmod(fd, mode)
                    os.utime(fd, (mtime, mtime))
                finally:
                    os.close(fd)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _remove(dir_fd: int, name: str, info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        remove_tree(dir_fd, name)
    else:
        os.unlink(name, dir_fd=dir_fd)


__all__ = ["Layer", "Limits", "UnsafeImage", "remove_scratch", "unpack"]
