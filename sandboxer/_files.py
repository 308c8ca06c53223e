"""read_file's host side: one member of a sandbox's tar stream, to memory or to a file."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator

from ._errors import EngineError, InvalidSpec
from ._output import BinaryWriter, TarStream, Writer, members, too_large

_CHUNK = 1024 * 1024
_OPEN_TARGET = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@contextlib.contextmanager
def host_target(into: BinaryWriter | str | os.PathLike[str]) -> Iterator[Writer]:
    """The write function for `into`: a binary file object, or a host path.

    A path is created (or truncated) as a regular file; a symlink or anything else
    standing at it is refused, never followed.
    """
    if not isinstance(into, str | os.PathLike):
        write = getattr(into, "write", None)
        if not callable(write):
            raise InvalidSpec("into", f"expected a binary file object or a path, got {into!r}")
        yield write
        return
    path = os.fspath(into)
    if not isinstance(path, str) or not path or "\0" in path:
        raise InvalidSpec("into", f"expected a host path without NUL bytes, got {into!r}")
    try:
        fd = os.open(path, _OPEN_TARGET, 0o644)
    except OSError as exc:
        raise InvalidSpec(
            "into", f"cannot write {path} (a symlink is not followed): {exc}"
        ) from exc
    with open(fd, "wb", closefd=True) as target:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidSpec("into", f"not a regular file: {path}")
        os.set_blocking(fd, True)
        target.truncate()
        yield target.write


def read_member(stream: TarStream, path: str, write: Writer, max_size: int) -> None:
    """Copy the one regular file `stream` holds to `write`, refusing it past `max_size`."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # plain tar: no decompression
            member = next(members(tar, stream), None)
            if member is not None:
                if not member.isreg():
                    raise EngineError(f"not a regular file in the sandbox: {path}")
                if member.size > max_size:
                    raise too_large(f"the file {path}", max_size, "max_size")
                source = tar.extractfile(member)
                assert source is not None  # a regular member always has content
                while chunk := source.read(_CHUNK):
                    write(chunk)
        stream.drain()  # the packing's own errors (a missing file) come at its end
    except tarfile.TarError as exc:
        stream.drain()
        raise EngineError(f"unreadable archive of {path} from the sandbox: {exc}") from exc
    if member is None:
        raise EngineError(f"the sandbox's archive of {path} is empty")


def read_to_memory(stream: TarStream, path: str, max_size: int) -> bytes:
    buffer = io.BytesIO()
    read_member(stream, path, buffer.write, max_size)
    return buffer.getvalue()
