"""Unpacking a sandbox's tar stream onto the host without following anything there.

tarfile.extractall is not used: its "data" filter is missing from Debian 12's Python
3.11.2 and has known bypasses before 3.11.13. Every entry is made relative to a
directory descriptor with O_NOFOLLOW/O_EXCL, inside a fresh scratch directory that only
this process writes to, which is then renamed to the destination.

What an archive may hold: directories, regular files, hard links to regular files
extracted earlier from the same archive, and relative symlinks that stay inside the
tree ('..' only as leading components, never above the top entry), at most MAX_DEPTH
components deep and MAX_PATH bytes long. Anything else (absolute names, '..', devices,
fifos, sparse files, links that leave the tree, names with NUL) is refused, and nothing
of it reaches the destination. Modes keep no set-id, sticky, group- or world-write bits.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path

from ._errors import EngineError, InvalidSpec
from ._output import TarStream, members, too_large

MAX_DEPTH = 256
MAX_PATH = 4096
_CHUNK = 1024 * 1024
_KEPT_MODE = 0o755  # what a sandbox's modes may say; the owner always keeps rwx on dirs
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
    _check_length(name)
    if "\0" in name or name.startswith("/"):
        raise UnsafeArchive(f"archive entry {name!r} is absolute or holds a NUL byte")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsafeArchive(f"archive entry {name!r} leaves the tree")
    if len(parts) > MAX_DEPTH:
        raise UnsafeArchive(f"archive entry {name[:100]!r}... is over {MAX_DEPTH} levels deep")
    return parts


def _check_length(path: str) -> None:
    if len(os.fsencode(path)) > MAX_PATH:
        raise UnsafeArchive(f"archive entry {path[:100]!r}... is over {MAX_PATH} bytes long")


def _check_symlink(parts: list[str], target: str) -> None:
    """A link must resolve inside the tree by its own words: leading '..' only."""
    _check_length(target)
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

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> int:
        """Make one entry; the number of data bytes written."""
        parts = _parts(member.name)
        if parts[0] != self.top:
            raise UnsafeArchive(f"archive entry {member.name!r} is not under {self.top!r}")
        with self.parent(parts) as fd:
            name = parts[-1]
            if member.isdir():
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
                self.dirs.append((tuple(parts), member.mode & _KEPT_MODE))
            elif member.isreg():
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
            os.fchmod(out, member.mode & _KEPT_MODE)
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
                os.fchmod(fd, mode | 0o700)


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
    try:
        scratch = _fresh_dir(parent_fd, ".sandboxer-")
        try:
            scratch_fd = os.open(scratch, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                _unpack(stream, _Tree(scratch_fd, top), max_size, max_members)
                _place(parent_fd, scratch_fd, top, name, overwrite)
            finally:
                os.close(scratch_fd)
        except BaseException as exc:
            _discard(parent_fd, scratch, exc)
            raise
        _discard(parent_fd, scratch, None)
    finally:
        os.close(parent_fd)


def _fresh_dir(dir_fd: int, prefix: str) -> str:
    """A new directory in dir_fd under an unguessable name; mkdir fails rather than reuse one."""
    name = prefix + secrets.token_hex(8)
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    return name


def _discard(parent_fd: int, scratch: str, error: BaseException | None) -> None:
    """Remove the scratch directory; a failure is noted on `error`, never raised over it."""
    try:
        remove_tree(parent_fd, scratch)
    except OSError as exc:
        problem = f"the scratch directory {scratch!r} could not be removed: {exc}"
        if error is None:
            raise EngineError(f"the copy landed, but {problem}") from exc
        error.add_note(problem)


def remove_tree(dir_fd: int, name: str) -> None:
    """Delete the directory dir_fd/name and all it holds without following a link.

    No recursion, and two descriptors at most however deep the tree goes (the entry moved
    aside for overwrite=True is the caller's, of any depth): it climbs back through '..',
    checking each time that it reached the directory it came down from.
    """
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    # Each directory entered: its name, its identity, the subdirectories it still holds.
    trail = [(name, _identity(fd), _empty_all_but_dirs(fd))]
    try:
        while trail:
            child_dirs = trail[-1][2]
            if child_dirs:
                child = child_dirs.pop()
                fd = _step(fd, os.open(child, _DIR_FLAGS, dir_fd=fd))
                trail.append((child, _identity(fd), _empty_all_but_dirs(fd)))
                continue
            done = trail.pop()[0]
            fd = _step(fd, os.open("..", _DIR_FLAGS, dir_fd=fd) if trail else os.dup(dir_fd))
            if trail and _identity(fd) != trail[-1][1]:
                raise OSError(f"{done!r} was moved while it was being removed")
            os.rmdir(done, dir_fd=fd)
    finally:
        os.close(fd)


def _step(old: int, new: int) -> int:
    """Move from the descriptor `old` to `new`, keeping one open."""
    os.close(old)
    return new


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _empty_all_but_dirs(fd: int) -> list[str]:
    """Unlink every entry of the directory `fd` but its subdirectories, which it returns."""
    with os.scandir(fd) as entries:
        listing = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for entry, is_dir in listing:
        if not is_dir:
            os.unlink(entry, dir_fd=fd)
    return [entry for entry, is_dir in listing if is_dir]


def _unpack(stream: TarStream, tree: _Tree, max_size: int, max_members: int) -> None:
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # plain tar: no decompression
            size = 0
            for count, member in enumerate(members(tar, stream), 1):
                if count > max_members:
                    raise too_large("the archive's member count", max_members, "max_members")
                if member.isreg() and size + member.size > max_size:
                    raise too_large("the archive's size", max_size, "max_size")
                try:
                    size += tree.add(tar, member)
                except OSError as exc:  # a duplicate name, or the host's disk
                    raise EngineError(f"unpacking {member.name!r} failed: {exc}") from exc
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
        # A fresh directory holds it: no name the archive chose can be in the way.
        aside = os.open(_fresh_dir(scratch_fd, "replaced-"), _DIR_FLAGS, dir_fd=scratch_fd)
        try:
            os.rename(name, name, src_dir_fd=parent_fd, dst_dir_fd=aside)
        finally:
            os.close(aside)
    os.rename(top, name, src_dir_fd=scratch_fd, dst_dir_fd=parent_fd)


__all__ = ["UnsafeArchive", "destination", "extract"]
