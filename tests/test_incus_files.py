"""The host side of Incus' direct file moves (backends/incus/_files.py), with no daemon:
which archives take that way, the tar stream a read gives the core, and the id maps.

The way itself (a thread that is the sandbox's user, openat2 inside its root) needs a
real sandbox: integration/test_incus_files.py.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from sandboxer._backend import single_file_archive
from sandboxer._errors import EngineError, ExecTimeout, OutputTooLarge
from sandboxer._files import read_to_memory
from sandboxer._output import TarStream
from sandboxer.backends.incus import _files


def test_write_files_archive_is_one_member() -> None:
    member = _files.single_file(single_file_archive("name.bin", b"\0data", 0o640))
    assert member == _files.Member("name.bin", b"\0data", 0o640, 0)


def _archive(*entries: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in entries:
            tar.addfile(entry, io.BytesIO(b"x" * entry.size) if entry.isreg() else None)
    return buffer.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type = kind
    entry.size = size if kind == tarfile.REGTYPE else 0
    return entry


@pytest.mark.parametrize(
    "entries",
    [
        [_entry("a"), _entry("b")],  # a tree: copy_in's
        [_entry("dir", tarfile.DIRTYPE)],
        [_entry("link", tarfile.SYMTYPE)],
        [_entry("sub/file")],
        [_entry("..")],
        [_entry(".")],
    ],
)
def test_anything_else_goes_the_tar_way(entries: list[tarfile.TarInfo]) -> None:
    assert _files.single_file(_archive(*entries)) is None


def test_copy_ins_file_keeps_its_time() -> None:
    entry = _entry("f", size=3)
    entry.mtime = 1_700_000_000
    member = _files.single_file(_archive(entry))
    assert member is not None and member.mtime == 1_700_000_000


def _stream_of(tmp_path: Path, data: bytes, timeout: float = 60.0) -> TarStream:
    source = tmp_path / "file"
    source.write_bytes(data)
    fd = os.open(source, os.O_RDONLY)
    return TarStream(_files.archive_of(fd, "file", "/tmp/file", timeout), "/tmp/file")


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 3 * 1024 * 1024 + 7])
def test_a_read_is_the_stream_tar_would_give(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    assert read_to_memory(_stream_of(tmp_path, data), "/tmp/file", size) == data


def test_the_size_is_refused_from_the_header(tmp_path: Path) -> None:
    with pytest.raises(OutputTooLarge):
        read_to_memory(_stream_of(tmp_path, b"x" * 4097), "/tmp/file", 4096)


def test_a_file_that_shrinks_meanwhile_is_an_error(tmp_path: Path) -> None:
    source = tmp_path / "file"
    source.write_bytes(b"x" * 2048)
    fd = os.open(source, os.O_RDONLY)
    chunks = _files.archive_of(fd, "file", "/tmp/file", 60.0)
    next(chunks)  # the header: 2048 bytes
    os.truncate(source, 100)
    with pytest.raises(EngineError, match="shrank"):
        list(chunks)


def test_a_read_past_its_timeout_stops(tmp_path: Path) -> None:
    with pytest.raises(ExecTimeout):
        read_to_memory(_stream_of(tmp_path, b"x" * 10, timeout=-1), "/tmp/file", 100)


@pytest.mark.parametrize(
    ("inside", "host"),
    [(0, 1065536), (1000, 1066536), (65535, 1131071), (65536, None), (-1, None)],
)
def test_ids_map_through_the_ranges(inside: int, host: int | None) -> None:
    assert _files._host_id("         0    1065536      65536\n", inside) == host
