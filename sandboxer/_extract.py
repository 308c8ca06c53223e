"""Unpacking a sandbox's tar stream onto the host without following anything there.

tarfile.extractall is not used: its "data" filter is missing from Debian 12's Python
3.11.2 and has known bypasses before 3.11.13. Every entry is made relative to a
directory descriptor with O_NOFOLLOW/O_EXCL, inside a fresh scratch directory that only
this process writes to, which is then renamed to the destination.

What an archive may hold: directories, regular files, hard links to regular files
extracted earlier from the same archive, and relative symlinks that stay inside the
tree ('..' only as leading components, never above the top entry). Anything else
(absolute names, '..', devices, fifos, links that leave the tree, names with NUL) is
refused, and nothing of it reaches the destination. Set-id bits are dropped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from ._errors import EngineError, InvalidSpec
from ._output import TarStream, too_large

_CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeArchive(EngineError):
    """The sandbox's archive holds an entry that could reach outside its destination."""


def destination(host_path: str | os.PathLike[str], field: str) -> tuple[Path, str]:
    """(the parent directory, the new entry's name) of a host destination."""
    try:
        text = os.fspath(host_path)
    except TypeError:
        raise InvalidSpec(field, f"expected a host path, got {host_path!r}") from None
    if not isinstance(text, str) or not text or "\0" in text:
        raise InvalidSpec(field, f"expected a host path without NUL bytes, got {host_path!r}")
    directory, name = os.path.split(text)
    if name in ("", ".", ".."):
        raise InvalidSpec(field, f"must name the new entry itself, got {text!r}")
    parent = Path(os.path.abspath(directory or "."))
    if not parent.is_dir():
        raise InvalidSpec(field, f"its directory does not exist: {parent}")
    return parent, name


def _parts(name: str) -> list[str]:
    """The components of a member name; UnsafeArchive if it could leave the tree."""
    if "\0" in name or name.startswith("/"):
        raise UnsafeArchive(f"archive entry {name!r} is absolute or holds a NUL byte")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafeArchive(f"archive entry {name!r} leaves the tree")
    return parts


def _check_symlink(parts: list[str], target: str) -> None:
    """A link must resolve inside the tree by its own words: leading '..' only."""
    words = [word for word in target.split("/") if word not in ("", ".")]
    ups = 0
    while ups < len(words) and words[ups] == "..":
        ups += 1
    inside = len(parts) - 1 - ups >= 1  # the top entry's own directory stays in reach
    if target.startswith("/") or "\0" in target or ".." in words[ups:] or not inside:
        raise UnsafeArchive(f"archive entry {'/'.join(parts)!r} links out of the tree")


class _Tree:
    """The scratch directory being filled, reached only through descriptors."""

    def __init__(self, root: int, top: str) -> None:
        self.root = root
        self.top = top
        self.files: set[tuple[str, ...]] = set()
        self.dirs: list[tuple[tuple[str, ...], int]] = []

    @contextlib.contextmanager
    def parent(self, parts: list[str]) -> Iterator[int]:
        """A descriptor of the entry's directory, made as needed, never through a link."""
        fd = os.dup(self.root)
        try:
            for part in parts[:-1]:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:  # a symlink or a file stands in the way
                    raise UnsafeArchive(f"archive entry {'/'.join(parts)!r}: {exc}") from exc
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo, stream: TarStream) -> int:
        """Make one entry; the number of data bytes written."""
        parts = _parts(member.name)
        if parts[0] != self.top:
            raise UnsafeArchive(f"archive entry {member.name!r} is not under {self.top!r}")
        with self.parent(parts) as fd:
            name = parts[-1]
            if member.isdir():
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
                self.dirs.append((tuple(parts), member.mode & 0o777))
            elif member.isreg():
                stream.allow(member.size)
                self._write(tar, member, fd, name)
                self.files.add(tuple(parts))
                return member.size
            elif member.issym():
                _check_symlink(parts, member.linkname)
                os.symlink(member.linkname, name, dir_fd=fd)
            elif member.islnk():
                self._hard_link(member, fd, name)
            else:
                raise UnsafeArchive(f"archive entry {member.name!r}: not a file, dir or link")
        return 0

    def _write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int, name: str) -> None:
        source = tar.extractfile(member)
        assert source is not None  # regular members always have content
        out = os.open(name, _NEW_FILE, 0o600, dir_fd=fd)
        try:
            while chunk := source.read(_CHUNK):
                _write_all(out, chunk)
            os.fchmod(out, member.mode & 0o777)
            os.utime(out, (member.mtime, member.mtime))
        finally:
            os.close(out)

    def _hard_link(self, member: tarfile.TarInfo, fd: int, name: str) -> None:
        target = _parts(member.linkname)
        if tuple(target) not in self.files:
            raise UnsafeArchive(f"archive entry {member.name!r} links to a file not in it")
        with self.parent(target) as source:
            os.link(target[-1], name, src_dir_fd=source, dst_dir_fd=fd, follow_symlinks=False)

    def finish(self) -> None:
        """Directory modes last (a read-only directory must be filled first), deepest first."""
        for parts, mode in sorted(self.dirs, key=lambda item: -len(item[0])):
            with self.parent([*parts, ""]) as fd:
                os.fchmod(fd, mode | stat.S_IRWXU)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def extract(
    stream: TarStream,
    top: str,
    parent: Path,
    name: str,
    *,
    overwrite: bool,
    max_size: int,
    max_members: int,
) -> None:
    """Unpack the tree `top` from `stream` to parent/name, replacing it only if `overwrite`."""
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    scratch = f".sandboxer-{uuid.uuid4().hex[:12]}"
    try:
        os.mkdir(scratch, 0o700, dir_fd=parent_fd)
        scratch_fd = os.open(scratch, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            _unpack(stream, _Tree(scratch_fd, top), max_size, max_members)
            _place(parent_fd, scratch_fd, top, name, overwrite)
        finally:
            os.close(scratch_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(scratch, dir_fd=parent_fd)
        os.close(parent_fd)


def _unpack(stream: TarStream, tree: _Tree, max_size: int, max_members: int) -> None:
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # plain tar: no decompression
            members, size = 0, 0
            while (member := tar.next()) is not None:
                members += 1
                if members > max_members:
                    raise too_large("the archive's member count", max_members, "max_members")
                if member.isreg() and size + member.size > max_size:
                    raise too_large("the archive's size", max_size, "max_size")
                try:
                    size += tree.add(tar, member, stream)
                except OSError as exc:  # a duplicate name, or the host's disk
                    raise EngineError(f"unpacking {member.name!r} failed: {exc}") from exc
                # Stream mode keeps every header otherwise (typeshed does not list it).
                tar.members.clear()  # type: ignore[attr-defined]
        stream.drain()
    except tarfile.TarError as exc:
        stream.drain()  # a failed packing explains a broken stream better
        raise EngineError(f"unreadable archive from the sandbox: {exc}") from exc
    try:
        os.lstat(tree.top, dir_fd=tree.root)
    except FileNotFoundError:
        raise EngineError(f"the sandbox's archive does not hold {tree.top!r}") from None
    tree.finish()


def _place(parent_fd: int, scratch_fd: int, top: str, name: str, overwrite: bool) -> None:
    """Move the new tree to parent/name; what stood there is moved aside, never entered."""
    try:
        os.lstat(name, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    else:
        if not overwrite:
            raise InvalidSpec("host_path", f"{name!r} exists; pass overwrite=True to replace it")
        # Renaming moves the entry itself (a link stays a link); it then goes with scratch.
        os.rename(name, ".replaced", src_dir_fd=parent_fd, dst_dir_fd=scratch_fd)
    os.rename(top, name, src_dir_fd=scratch_fd, dst_dir_fd=parent_fd)


__all__ = ["UnsafeArchive", "destination", "extract"]
