"""Bounded intake of what a sandbox sends: exec output and tar streams.

Nothing here holds more than a stated number of bytes: in-memory output stops at its
cap, and a tar stream is read as a file whose length is bounded by its members' data
plus a fixed allowance for headers that no member's declared size can add to.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from typing import Protocol

from ._errors import EngineError, InvalidSpec, OutputTooLarge

MiB = 1 << 20
# The in-memory forms (exec output, read_file without `into`).
DEFAULT_MAX_OUTPUT = 64 * MiB
# What goes to the host's disk (copy_out, read_file into a file).
DEFAULT_MAX_DISK = 4096 * MiB
DEFAULT_MAX_MEMBERS = 100_000
# Headers, long names, padding and end blocks a tar stream may carry beyond member data.
TAR_OVERHEAD = 8 * MiB
TAR_OVERHEAD_PER_MEMBER = 2048

Writer = Callable[[bytes], object]


class BinaryWriter(Protocol):
    def write(self, data: bytes, /) -> object: ...


def as_writer(field: str, target: BinaryWriter | Writer | None) -> Writer | None:
    """The write function of a binary file object or a callback taking bytes."""
    if target is None:
        return None
    write = getattr(target, "write", None)
    if callable(write):
        return write  # type: ignore[no-any-return]
    if callable(target):
        return target
    raise InvalidSpec(field, f"expected a binary file object or a callable, got {target!r}")


def limit_argument(field: str, value: object, default: int) -> int:
    """A byte cap given by a caller: a positive int, or None for `default`."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidSpec(field, f"expected a positive number of bytes, got {value!r}")
    return value


class Collector:
    """Routes exec output to the caller's writers, or into memory up to `limit` bytes in all."""

    def __init__(self, limit: int, stdout: Writer | None = None, stderr: Writer | None = None):
        self._writers = {"stdout": stdout, "stderr": stderr}
        # BytesIO hands its buffer over in getvalue() without a copy: one cap's worth, not two.
        self._kept = {"stdout": io.BytesIO(), "stderr": io.BytesIO()}
        self._room = limit
        self.truncated = False

    def add(self, stream: str, chunk: bytes) -> bool:
        """Take one chunk; False once the in-memory cap is passed (what fitted is kept)."""
        writer = self._writers.get(stream)
        if writer is not None:
            writer(chunk)
            return True
        kept = chunk[: self._room]
        self._kept[stream].write(kept)
        self._room -= len(kept)
        if len(kept) < len(chunk):
            self.truncated = True
        return not self.truncated

    def output(self, stream: str) -> bytes:
        return self._kept[stream].getvalue()


class TarStream(io.RawIOBase):
    """A tar stream read from chunks, as a file for tarfile's stream mode ("r|").

    Data and headers are bounded apart. A member's data may take exactly the size it
    declares (tarfile reads that much before the next header, and sparse members, whose
    declared size is not what they carry, are refused). Headers are what is left: at most
    TAR_OVERHEAD for one member's headers, since tarfile reads a pax or long-name header
    whole into memory, and TAR_OVERHEAD plus TAR_OVERHEAD_PER_MEMBER per member in all.
    """

    def __init__(self, chunks: Iterator[bytes], what: str) -> None:
        super().__init__()
        self._chunks = chunks
        self._what = what
        self._pending = memoryview(b"")
        self._given = 0  # bytes handed to the reader
        self._allowed = TAR_OVERHEAD  # the whole stream's bound so far
        self._window = TAR_OVERHEAD  # where this member's data and the next headers end

    def admit(self, member: tarfile.TarInfo) -> None:
        """Account for a member tarfile just read: its data, then the next member's headers."""
        if member.issparse() or any(key.startswith("GNU.sparse.") for key in member.pax_headers):
            raise EngineError(
                f"{self._what}: the archive holds a sparse member ({member.name!r}); refusing it"
            )
        data = member.size if member.isreg() else 0
        self._allowed += data + TAR_OVERHEAD_PER_MEMBER
        # Bytes tarfile buffered ahead count here too: a little slack, never a header's worth.
        self._window = self._given + data + TAR_OVERHEAD

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        room = min(self._allowed, self._window) - self._given
        if room <= 0:
            raise EngineError(
                f"{self._what}: the archive holds more than its members "
                f"declare (a header over {TAR_OVERHEAD} bytes, or over {self._allowed} bytes "
                "in all); refusing it"
            )
        size = min(len(buffer), len(self._pending), room)
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self._given += size
        return size

    def drain(self) -> None:
        """Read to the end: the packing command's status (and its errors) come last."""
        scratch = bytearray(64 * 1024)
        while self.readinto(memoryview(scratch)):
            pass


def members(tar: tarfile.TarFile, stream: TarStream) -> Iterator[tarfile.TarInfo]:
    """The members of `tar`, read from `stream`, each admitted to it before it is seen."""
    while (member := tar.next()) is not None:
        stream.admit(member)
        # Stream mode keeps every header otherwise (typeshed does not list it).
        tar.members.clear()  # type: ignore[attr-defined]
        yield member


def too_large(what: str, limit: int, argument: str) -> OutputTooLarge:
    return OutputTooLarge(what, limit, f"pass {argument}= a bigger cap to allow more")
