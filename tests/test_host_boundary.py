"""The host side of the boundary on the fake engine: caps, streams, deadlines, destinations.

Integration tests (integration/test_host_boundary.py) repeat the main lines on real
engines; these pin the rules down case by case.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import os
import posixpath
import resource
import socket
import stat
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandboxer
from sandboxer import Handle, _extract
from sandboxer._backend import Backend, ExecGenerator, ExecRequest, ExitStatus
from sandboxer._output import TAR_OVERHEAD
from sandboxer.backends.docker._exec import stream_exec
from sandboxer.backends.incus._exec import stream as incus_stream
from sandboxer.backends.incus._websocket import WebSocket
from sandboxer.testing import FakeBackend
from sandboxer.testing._fake import chunked

MiB = 1 << 20


class Firehose(FakeBackend):
    """`yes` prints without end; everything else is the fake's. Records what was closed."""

    closed: list[tuple[str, ...]] = []  # per-test state, reset by the fixture
    archive: bytes | None = None
    tar_status = ExitStatus(0)

    def exec(self, handle: Handle, request: ExecRequest) -> ExecGenerator:
        if request.argv[0] == "yes":
            return self._endless(request.argv)
        if request.argv[0] == "tar":
            return self._tar(handle, request)
        return super().exec(handle, request)

    def _endless(self, argv: tuple[str, ...]) -> ExecGenerator:
        try:
            while True:
                yield "stdout", b"y\n" * 32768
                yield "stderr", b"e"
        finally:
            self.closed.append(argv)

    def _tar(self, handle: Handle, request: ExecRequest) -> ExecGenerator:
        """`tar -c -f - -C DIR -- NAME`: the set archive, or the fake's own of DIR/NAME."""
        assert request.argv[-2] == "--", "a path must come after --"
        archive = self.archive
        if archive is None:
            path = posixpath.join(request.argv[-3], request.argv[-1])
            archive = b"".join(FakeBackend.get_archive(self, handle, path, 60.0, 1 << 40))
        yield from (("stdout", chunk) for chunk in chunked(archive))
        return self.tar_status

    # The base class's archive path, through exec, as the real engines take it.
    get_archive = Backend.get_archive


@pytest.fixture
def firehose() -> Iterator[type[Firehose]]:
    Firehose.closed, Firehose.archive, Firehose.tar_status = [], None, ExitStatus(0)
    sandboxer.register_backend("firehose", Firehose, replace=True)
    yield Firehose
    sandboxer.unregister_backend("firehose")


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o755
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    return info, data


# exec: caps, sinks, kills ------------------------------------------------------------
def test_exec_past_its_cap_is_killed_and_raises_with_the_partial_result(
    firehose: type[Firehose],
) -> None:
    with (
        sandboxer.launch(backend="firehose") as sb,
        pytest.raises(sandboxer.OutputTooLarge, match="max_output") as error,
    ):
        sb.exec(["yes"], max_output=MiB)
    result = error.value.result
    assert result is not None and result.truncated and not result.timed_out
    assert len(result.stdout) + len(result.stderr) == MiB
    assert result.exit_code < 0  # killed, as on a timeout
    assert firehose.closed == [("yes",)]
    assert error.value.limit == MiB


def test_exec_streams_to_files_and_callables_without_a_cap(firehose: type[Firehose]) -> None:
    seen: list[bytes] = []
    out = io.BytesIO()
    with sandboxer.launch(backend="firehose") as sb:
        result = sb.exec(["echo", "hi"], stdout=out, stderr=seen.append, max_output=1)
        assert (out.getvalue(), result.stdout, result.truncated) == (b"hi\n", b"", False)
        # A callback that gives up stops (kills) the command.
        with pytest.raises(RuntimeError):
            sb.exec(["yes"], stdout=_stop_after(3))
    assert firehose.closed == [("yes",)]


def _stop_after(count: int) -> object:
    calls = iter(range(count))

    def write(chunk: bytes) -> None:
        if next(calls, None) is None:
            raise RuntimeError("enough")

    return write


def test_leaving_an_exec_stream_early_kills_the_command(firehose: type[Firehose]) -> None:
    with sandboxer.launch(backend="firehose") as sb:
        stream = iter(sb.exec_stream(["yes"]))
        assert next(stream)[0] == "stdout"
        stream.close()  # type: ignore[attr-defined]
    assert firehose.closed == [("yes",)]


def test_errors_and_logs_name_the_program_not_its_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "--password=hunter2"
    error = sandboxer.ExecTimeout(("mysql", secret), 1.0, b"", b"")
    assert secret not in str(error) and "mysql" in str(error)
    with caplog.at_level(logging.DEBUG, "sandboxer"), sandboxer.launch(backend="fake") as sb:
        sb.exec(["echo", secret])
    assert "echo" in caplog.text and secret not in caplog.text


# read_file ---------------------------------------------------------------------------
def test_read_file_caps_memory_and_streams_into_a_file(
    firehose: type[Firehose], tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB)
    with sandboxer.launch(backend="firehose") as sb:
        sb.write_file("/tmp/big", data)
        with pytest.raises(sandboxer.OutputTooLarge, match="max_size"):
            sb.read_file("/tmp/big", max_size=MiB)
        assert sb.read_file("/tmp/big", max_size=3 * MiB) == data
        target = io.BytesIO()
        assert sb.read_file("/tmp/big", into=target) == b""
        assert target.getvalue() == data
        (tmp_path / "old").write_bytes(b"x" * (5 * MiB))
        sb.read_file("/tmp/big", into=tmp_path / "old")  # truncated, then written
        assert (tmp_path / "old").read_bytes() == data


def test_read_file_into_a_symlink_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"host file")
    (tmp_path / "link").symlink_to(victim)
    os.mkfifo(tmp_path / "fifo")
    with sandboxer.launch(backend="fake") as sb:
        sb.write_file("/tmp/f", b"sandbox data")
        for bad in ("link", "fifo"):
            with pytest.raises(sandboxer.InvalidSpec, match="into"):
                sb.read_file("/tmp/f", into=tmp_path / bad)
    assert victim.read_bytes() == b"host file"


def test_a_stalled_or_failed_packing_raises(firehose: type[Firehose]) -> None:
    firehose.archive = _tar(_member("f", data=b"partial"))
    with sandboxer.launch(backend="firehose") as sb:
        firehose.tar_status = ExitStatus(-1, timed_out=True)
        with pytest.raises(sandboxer.ExecTimeout):
            sb.read_file("/tmp/f", timeout=3)
        firehose.tar_status = ExitStatus(2)
        with pytest.raises(sandboxer.EngineError, match="packing"):
            sb.read_file("/tmp/f")


def test_a_compressed_stream_is_not_decompressed(firehose: type[Firehose]) -> None:
    firehose.archive = gzip.compress(_tar(_member("f", data=b"x" * 1000)))
    with (
        sandboxer.launch(backend="firehose") as sb,
        pytest.raises(sandboxer.EngineError, match="unreadable"),
    ):
        sb.read_file("/tmp/f")


def test_a_stream_longer_than_its_members_declare_is_refused(firehose: type[Firehose]) -> None:
    # A small file and then endless bytes: the reader stops at the allowance.
    firehose.archive = _tar(_member("f", data=b"x")) + b"\0" * (TAR_OVERHEAD + MiB)
    with (
        sandboxer.launch(backend="firehose") as sb,
        pytest.raises(sandboxer.EngineError, match="more than its members declare"),
    ):
        sb.read_file("/tmp/f")


def test_a_path_starting_with_a_dash_is_a_path(firehose: type[Firehose]) -> None:
    firehose.archive = _tar(_member("-rf", data=b"ok"))
    with sandboxer.launch(backend="firehose") as sb:
        assert sb.read_file("/tmp/-rf") == b"ok"  # Firehose checks the `--`


def _gnu_sparse(name: str, real_size: int) -> bytes:
    """An old-GNU sparse member (tarfile writes none): one byte after a `real_size` hole."""
    info = tarfile.TarInfo(name)
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 1
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:410] = b"%011o\0%011o\0" % (real_size - 1, 1)  # the one stored run
    header[483:495] = b"%011o\0" % real_size
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % tarfile.calc_chksums(bytes(header))[0]
    return bytes(header) + b"x".ljust(512, b"\0")


def _pax_sparse(name: str, real_size: int) -> bytes:
    """A PAX 1.0 sparse member, as GNU tar --sparse --posix or bsdtar write them."""
    info, _ = _member(f"{posixpath.dirname(name)}/GNUSparseFile.0/{posixpath.basename(name)}")
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(real_size),
    }
    return _blocks(info, (b"1\n%d\n1\n" % (real_size - 1)).ljust(512, b"\0") + b"x")


def _blocks(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    """One member's headers and data, to put together with others by hand."""
    info.size = len(data)
    return info.tobuf(tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512)


def _raw(*members: bytes) -> bytes:
    return b"".join(members) + b"\0" * 1024  # the end-of-archive blocks


SPARSE = {"gnu": _gnu_sparse, "pax": _pax_sparse}


@pytest.mark.parametrize("kind", SPARSE)
def test_read_file_refuses_a_sparse_member(kind: str, firehose: type[Firehose]) -> None:
    # Its declared size is not what it sends: it would earn allowance for bytes never read.
    firehose.archive = _raw(SPARSE[kind]("f", 30 * MiB))
    with (
        sandboxer.launch(backend="firehose") as sb,
        pytest.raises(sandboxer.EngineError, match="sparse"),
    ):
        sb.read_file("/tmp/f")


# copy_out: destinations ---------------------------------------------------------------
@pytest.fixture
def box() -> Iterator[sandboxer.Sandbox]:
    with sandboxer.launch(backend="fake") as sb:
        sb.exec(["mkdir", "/tmp/tree"])
        sb.write_file("/tmp/tree/a", b"new")
        yield sb


def test_copy_out_refuses_an_existing_destination_unless_told(
    box: sandboxer.Sandbox, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old").write_bytes(b"old")
    with pytest.raises(sandboxer.InvalidSpec, match="overwrite"):
        box.copy_out("/tmp/tree", dest)
    box.copy_out("/tmp/tree", dest, overwrite=True)
    assert sorted(p.name for p in dest.iterdir()) == ["a"]  # replaced, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["dest"]  # no scratch left


def test_copy_out_never_writes_through_a_symlink_at_the_destination(
    box: sandboxer.Sandbox, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "dest"
    dest.symlink_to(elsewhere)
    with pytest.raises(sandboxer.InvalidSpec):
        box.copy_out("/tmp/tree", dest)
    box.copy_out("/tmp/tree", dest, overwrite=True)
    assert not dest.is_symlink() and (dest / "a").read_bytes() == b"new"
    assert list(elsewhere.iterdir()) == []


def test_copy_out_follows_links_in_the_parent_path(box: sandboxer.Sandbox, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real)
    box.copy_out("/tmp/tree", tmp_path / "via" / "dest")
    assert (real / "dest" / "a").read_bytes() == b"new"


def test_copy_out_validates_before_the_engine(box: sandboxer.Sandbox, tmp_path: Path) -> None:
    calls = len(FakeBackend.sandboxes[box.name].calls)
    for bad in (tmp_path / "missing" / "x", f"{tmp_path}/.", "", f"{tmp_path}/a\0b"):
        with pytest.raises(sandboxer.InvalidSpec, match="host_path"):
            box.copy_out("/tmp/tree", bad)
    with pytest.raises(sandboxer.InvalidSpec, match="max_members"):
        box.copy_out("/tmp/tree", tmp_path / "x", max_members=0)
    assert len(FakeBackend.sandboxes[box.name].calls) == calls


def _copy_out_of(firehose: type[Firehose], archive: bytes, dest: Path, **options: int) -> None:
    firehose.archive = archive
    with sandboxer.launch(backend="firehose") as sb:
        sb.copy_out("/out", dest, **options)  # type: ignore[arg-type]


def test_copy_out_bounds_member_count_and_size(firehose: type[Firehose], tmp_path: Path) -> None:
    many = _tar(_member("out", tarfile.DIRTYPE), *(_member(f"out/{i}") for i in range(50)))
    with pytest.raises(sandboxer.OutputTooLarge, match="max_members"):
        _copy_out_of(firehose, many, tmp_path / "a", max_members=10)
    big = _tar(_member("out", tarfile.DIRTYPE), _member("out/f", data=b"x" * 5000))
    with pytest.raises(sandboxer.OutputTooLarge, match="max_size"):
        _copy_out_of(firehose, big, tmp_path / "b", max_size=4096)
    assert sorted(os.listdir(tmp_path)) == []  # nothing landed, no scratch left


def test_copy_out_keeps_links_inside_the_tree(firehose: type[Firehose], tmp_path: Path) -> None:
    archive = _tar(
        _member("out", tarfile.DIRTYPE),
        _member("out/sub", tarfile.DIRTYPE),
        _member("out/f", data=b"data"),
        _member("out/hard", tarfile.LNKTYPE, link="out/f"),
        _member("out/sub/up", tarfile.SYMTYPE, link="../f"),
    )
    _copy_out_of(firehose, archive, tmp_path / "dest")
    dest = tmp_path / "dest"
    assert (dest / "hard").read_bytes() == b"data" and (dest / "f").stat().st_nlink == 2
    assert os.readlink(dest / "sub" / "up") == "../f"


@pytest.mark.parametrize(
    "members",
    [
        [_member("out/sub", tarfile.SYMTYPE, link="../../etc")],
        [_member("out/sub", tarfile.SYMTYPE, link="x/../../..")],
        [_member("out/fifo", tarfile.FIFOTYPE)],
        [_member("out/dev", tarfile.BLKTYPE)],
        [_member("elsewhere/f", data=b"x")],
        [_member("out/f"), _member("out/f")],  # a second copy must not replace the first
        [_member("out/" + "d/" * _extract.MAX_DEPTH + "f")],
        [_member("out/" + "/".join(["n" * 200] * 21))],  # 4225 bytes, 22 deep
        [_member("out/" + "a/" * 3000 + "f", data=b"x"), _member("/etc/evil")],
    ],
    ids=[
        *("link up", "link through dot-dot", "fifo", "block device", "other top", "duplicate"),
        *("too deep", "too long", "too deep to clean up, then bad"),
    ],
)
def test_copy_out_refuses_what_could_leave_the_tree(
    members: list[tuple[tarfile.TarInfo, bytes]], firehose: type[Firehose], tmp_path: Path
) -> None:
    archive = _tar(_member("out", tarfile.DIRTYPE), *members)
    with pytest.raises(sandboxer.SandboxError):
        _copy_out_of(firehose, archive, tmp_path / "dest")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", SPARSE)
def test_copy_out_refuses_a_sparse_member(
    kind: str, firehose: type[Firehose], tmp_path: Path
) -> None:
    # It earned 30 MiB of allowance for one byte sent, which the next pax header then spent.
    huge, _ = _member("out/g")
    huge.pax_headers = {"comment": "x" * (20 * MiB)}
    archive = _raw(
        _blocks(_member("out", tarfile.DIRTYPE)[0]),
        SPARSE[kind]("out/f", 30 * MiB),
        _blocks(huge, b"g"),
    )
    with pytest.raises(sandboxer.EngineError, match="sparse"):
        _copy_out_of(firehose, archive, tmp_path / "dest")
    assert os.listdir(tmp_path) == []


def test_one_members_headers_stay_under_the_fixed_overhead(
    firehose: type[Firehose], tmp_path: Path
) -> None:
    # What small members leave of their allowance must not add up to one header bigger
    # than TAR_OVERHEAD: tarfile reads a pax header whole into memory.
    small = [_member(f"out/{i}", data=b"x") for i in range(1000)]
    huge = _member("out/last")
    huge[0].pax_headers = {"comment": "x" * (TAR_OVERHEAD + MiB // 4)}
    archive = _tar(_member("out", tarfile.DIRTYPE), *small, huge)
    with pytest.raises(sandboxer.EngineError, match="more than its members declare"):
        _copy_out_of(firehose, archive, tmp_path / "dest")
    assert os.listdir(tmp_path) == []


def test_copy_out_keeps_no_write_bits_for_others_and_no_special_bits(
    firehose: type[Firehose], tmp_path: Path
) -> None:
    archive = _tar(
        _member("out", tarfile.DIRTYPE, mode=0o777),
        _member("out/run", mode=0o777),
        _member("out/suid", mode=0o6777),
        _member("out/private", mode=0o640),
        _member("out/tmp", tarfile.DIRTYPE, mode=0o1777),
        _member("out/ro", tarfile.DIRTYPE, mode=0o500),
    )
    _copy_out_of(firehose, archive, tmp_path / "dest")
    dest = tmp_path / "dest"
    modes = {path.name: stat.S_IMODE(path.lstat().st_mode) for path in (dest, *dest.iterdir())}
    assert modes == {
        **{"dest": 0o755, "run": 0o755, "suid": 0o755, "private": 0o640},
        **{"tmp": 0o755, "ro": 0o700},  # the owner keeps rwx on directories
    }


def test_overwrite_replaces_whatever_the_new_entry_is_called(
    firehose: type[Firehose], tmp_path: Path
) -> None:
    # The old entry is moved aside inside the scratch directory, next to the new one.
    dest = tmp_path / "dest"
    dest.write_bytes(b"old")
    firehose.archive = _tar(_member(".replaced", data=b"new"))
    with sandboxer.launch(backend="firehose") as sb:
        sb.copy_out("/x/.replaced", dest, overwrite=True)
    assert dest.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["dest"]


def _deep_dirs(root: Path, depth: int) -> None:
    """root/d/d/... `depth` levels down, past what a path (or shutil.rmtree) can reach."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)


def test_overwrite_removes_an_old_tree_of_any_depth(box: sandboxer.Sandbox, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    _deep_dirs(dest, 3000)
    box.copy_out("/tmp/tree", dest, overwrite=True)
    assert os.listdir(dest) == ["a"]
    assert os.listdir(tmp_path) == ["dest"]


def test_a_failing_clean_up_never_hides_what_went_wrong(
    firehose: type[Firehose], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(dir_fd: int, name: str) -> None:
        raise PermissionError("no")

    monkeypatch.setattr(_extract, "remove_tree", fail)
    bad = _tar(_member("out", tarfile.DIRTYPE), _member("out/fifo", tarfile.FIFOTYPE))
    with pytest.raises(_extract.UnsafeArchive) as error:
        _copy_out_of(firehose, bad, tmp_path / "a")
    assert any("could not be removed" in note for note in error.value.__notes__)
    good = _tar(_member("out", tarfile.DIRTYPE))
    with pytest.raises(sandboxer.EngineError, match="landed, but the scratch directory"):
        _copy_out_of(firehose, good, tmp_path / "b")
    assert (tmp_path / "b").is_dir()


def test_removal_stops_if_a_directory_is_moved_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Climbing back through '..' from a moved directory would land elsewhere.
    for path in ("scratch/a/b", "scratch/a/c", "elsewhere/c"):
        (tmp_path / path).mkdir(parents=True)
    (tmp_path / "elsewhere" / "c" / "victim").write_bytes(b"keep")
    empty = _extract._empty_all_but_dirs

    def move_b_away(fd: int) -> list[str]:
        if os.path.samestat(os.fstat(fd), (tmp_path / "scratch" / "a" / "b").stat()):
            os.rename(tmp_path / "scratch" / "a" / "b", tmp_path / "elsewhere" / "b")
        return sorted(empty(fd), reverse=True)  # popped from the end: b is entered first

    monkeypatch.setattr(_extract, "_empty_all_but_dirs", move_b_away)
    parent = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError, match="moved"):
            _extract.remove_tree(parent, "scratch")
    finally:
        os.close(parent)
    assert (tmp_path / "elsewhere" / "c" / "victim").read_bytes() == b"keep"


# bad input on every entry point ---------------------------------------------------------
BAD_EXEC_ARGUMENTS = [
    ("env", {"env": {"": "x"}}, "env['']"),
    ("env", {"env": {"A=B": "1"}}, "env['A=B']"),
    ("env", {"env": {"A\0": "1"}}, "env["),
    ("env", {"env": {"A": "x\0y"}}, "env['A']"),
    ("env", {"env": ["A=1"]}, "env"),
    ("workdir", {"workdir": "relative"}, "workdir"),
    ("workdir", {"workdir": ""}, "workdir"),
    ("workdir", {"workdir": "/proc/self"}, "workdir"),
    ("user", {"user": ""}, "user"),
    ("user", {"user": "a b"}, "user"),
    ("user", {"user": "-o"}, "user"),
    ("user", {"user": "root\n"}, "user"),
    ("timeout", {"timeout": float("inf")}, "timeout"),
    ("timeout", {"timeout": 0}, "timeout"),
    ("stdin", {"stdin": 5}, "stdin"),
    ("max_output", {"max_output": 0}, "max_output"),
    ("stdout", {"stdout": 5}, "stdout"),
]


@pytest.mark.parametrize(("name", "kwargs", "field"), BAD_EXEC_ARGUMENTS)
def test_bad_exec_arguments_fail_before_the_engine(
    name: str, kwargs: dict[str, object], field: str
) -> None:
    with sandboxer.launch(backend="fake") as sb:
        calls = len(FakeBackend.sandboxes[sb.name].calls)
        with pytest.raises(sandboxer.InvalidSpec) as error:
            sb.exec(["true"], **kwargs)  # type: ignore[arg-type]
        assert error.value.field.startswith(field)
        if name not in ("max_output", "stdout"):
            with pytest.raises(sandboxer.InvalidSpec):
                sb.exec_stream(["true"], **kwargs)  # type: ignore[arg-type]
        assert len(FakeBackend.sandboxes[sb.name].calls) == calls


def test_good_exec_arguments_pass() -> None:
    with sandboxer.launch(backend="fake") as sb:
        assert sb.exec(["pwd"], workdir="/").stdout == b"/\n"
        assert sb.exec(["env"], env={"A": "line\nbreak"}).ok
        assert sb.exec(["id", "-u"], user="1000:1000").ok


def test_bad_file_call_arguments_fail_before_the_engine(tmp_path: Path) -> None:
    with sandboxer.launch(backend="fake") as sb:
        for call, field in (
            (lambda: sb.write_file("/tmp/x", 5), "data"),  # type: ignore[arg-type]
            (lambda: sb.write_file("/tmp/x", b"", mode=0o70000), "mode"),
            (lambda: sb.write_file("/tmp/x", b"", timeout=-1), "timeout"),
            (lambda: sb.read_file("/tmp/x", max_size=-5), "max_size"),
            (lambda: sb.read_file("/tmp/x", into=5), "into"),  # type: ignore[arg-type]
            (lambda: sb.copy_in(tmp_path / "nope", "/tmp/x"), "host_path"),
            (lambda: sb.copy_in(tmp_path, "/tmp/x", timeout=0), "timeout"),
        ):
            with pytest.raises(sandboxer.InvalidSpec) as error:
                call()
            assert error.value.field == field
        assert FakeBackend.sandboxes[sb.name].calls == []


# multiplexers past descriptor 1024 -----------------------------------------------------
@contextlib.contextmanager
def _high_socketpair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A socket pair whose first end is numbered above 1024 (select() cannot take it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"the file descriptor limit {hard} is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    ours, theirs = socket.socketpair()
    high = os.dup2(ours.detach(), 1100)
    try:
        yield socket.socket(fileno=high), theirs
    finally:
        theirs.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_docker_multiplexer_takes_a_descriptor_above_1024() -> None:
    with _high_socketpair() as (ours, theirs):
        assert ours.fileno() >= 1024
        frame = struct.pack(">BxxxL", 1, 5) + b"hello" + struct.pack(">BxxxL", 2, 3)
        theirs.sendall(frame + b"err")
        theirs.shutdown(socket.SHUT_WR)
        output = list(stream_exec(ours, None, 5.0, lambda: None, lambda: 0))
    assert output == [("stdout", b"hello"), ("stderr", b"err")]


def test_docker_frames_are_passed_on_in_pieces() -> None:
    with _high_socketpair() as (ours, theirs):
        theirs.sendall(struct.pack(">BxxxL", 1, 1 << 30) + b"x" * 1000)  # claims 1 GiB
        theirs.shutdown(socket.SHUT_WR)
        output = list(stream_exec(ours, None, 5.0, lambda: None, lambda: 0))
    assert b"".join(chunk for _, chunk in output) == b"x" * 1000


class _Done:
    def result(self) -> dict[str, object]:
        return {"metadata": {"return": 0}}

    def close(self) -> None:
        pass


def test_incus_multiplexer_takes_a_descriptor_above_1024() -> None:
    def frame(opcode: int, payload: bytes) -> bytes:
        return struct.pack("!BB", 0x80 | opcode, len(payload)) + payload

    with _high_socketpair() as (ours, theirs), contextlib.ExitStack() as stack:
        pairs = [socket.socketpair() for _ in range(3)]
        for a, b in pairs:
            stack.callback(a.close)
            stack.callback(b.close)
        sockets = {-1: WebSocket(pairs[0][0]), 0: WebSocket(pairs[1][0])}
        sockets[1], sockets[2] = WebSocket(ours), WebSocket(pairs[2][0])
        theirs.sendall(frame(2, b"out") + frame(1, b""))
        pairs[2][1].sendall(frame(2, b"err") + frame(1, b""))
        output = list(incus_stream(_Done(), sockets, None, 5.0, lambda ws: None))  # type: ignore[arg-type]
    assert sorted(output) == [("stderr", b"err"), ("stdout", b"out")]


def test_an_incus_message_claiming_a_huge_size_is_refused_not_buffered() -> None:
    ours, theirs = socket.socketpair()
    with contextlib.closing(ours), contextlib.closing(theirs):
        theirs.sendall(struct.pack("!BBQ", 0x82, 127, 1 << 40) + b"x" * 100)
        with pytest.raises(sandboxer.EngineError, match="over"):
            WebSocket(ours).receive()
