"""A writer for the "newc" cpio format the kernel unpacks as an initramfs.

Written here rather than with the cpio tool so that the archive can hold root-owned files
and device nodes (/dev/console) without root rights or a staging tree on disk.
"""

from __future__ import annotations

import stat
import tarfile
from typing import BinaryIO

_TRAILER = "TRAILER!!!"


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


class CpioWriter:
    """Appends entries to `stream`; `close()` writes the trailer (not closing the stream)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._inode = 1
        self._names: set[str] = set()

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        *,
        uid: int = 0,
        gid: int = 0,
        rdev: tuple[int, int] = (0, 0),
        nlink: int = 1,
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, uid, gid, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._stream.write(header + encoded + _pad(len(header) + len(encoded)))
        self._stream.write(data + _pad(len(data)))
        self._inode += 1

    def _claim(self, name: str) -> str:
        name = name.strip("/")
        if name in self._names:
            raise ValueError(f"{name} is already in the archive")
        self._names.add(name)
        return name

    def directory(self, name: str, mode: int = 0o755, uid: int = 0) -> None:
        self._entry(self._claim(name), stat.S_IFDIR | mode, uid=uid, gid=uid, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(self._claim(name), stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(self._claim(name), stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(self._claim(name), stat.S_IFCHR | mode, rdev=(major, minor))

    def has(self, name: str) -> bool:
        return name.strip("/") in self._names

    def add_tar(self, archive: tarfile.TarFile, skip: frozenset[str] = frozenset()) -> None:
        """Every directory, regular file and symlink of `archive`, except the names in `skip`."""
        for member in archive:
            name = member.name.strip("/")
            if not name or name in skip:
                continue
            if member.isdir():
                self.directory(name, member.mode & 0o7777, member.uid)
            elif member.issym():
                self.symlink(name, member.linkname)
            elif member.isfile():
                source = archive.extractfile(member)
                assert source is not None
                self.file(name, source.read(), member.mode & 0o7777)
            else:
                raise ValueError(f"unsupported member type in the root file system: {name}")

    def close(self) -> None:
        self._entry(_TRAILER, 0)
