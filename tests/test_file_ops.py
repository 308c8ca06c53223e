"""The file calls (listdir, stat, exists, remove, mkdir): their arguments, how hostile
output is read, and their scripts run for real on this host's busybox and GNU tools."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandboxer
from sandboxer import _file_ops as file_ops
from sandboxer._backend import ExecGenerator, ExitStatus
from sandboxer._file_ops import FileType
from sandboxer.backends.incus import _boot
from sandboxer.images.helper import BUSYBOX_CANDIDATES
from sandboxer.testing import FakeBackend

STATIC_BUSYBOX = next(p for p in BUSYBOX_CANDIDATES if os.path.exists(p))


def _generator(
    chunks: list[tuple[str, bytes]], status: ExitStatus, closed: list[bool] | None = None
) -> ExecGenerator:
    try:
        yield from chunks
        return status
    finally:
        if closed is not None:
            closed.append(True)


# --- the scripts, run here: busybox's applets, and a GNU userland through PATH --------
@pytest.fixture(params=[STATIC_BUSYBOX, None], ids=["busybox", "own-tools"])
def tools(request: pytest.FixtureRequest) -> str | None:
    return request.param  # type: ignore[no-any-return]


def _local(call: file_ops.FileCall, busybox: str | None) -> bytes:
    request = call.request(busybox, None, 30.0)
    done = subprocess.run(request.argv, input=request.stdin, capture_output=True, timeout=30)
    status = ExitStatus(done.returncode)
    return file_ops.run(
        call, _generator([("stdout", done.stdout), ("stderr", done.stderr)], status), 30
    )


def _names(tmp_path: Path) -> list[bytes]:
    names = [b"with space", b"new\nline", b"\xff\xfe-raw", b"-dash", b"tab\tq'\""]
    for name in names:
        (tmp_path / os.fsdecode(name)).write_bytes(name)
    return names


def test_listing_hostile_names(tmp_path: Path, tools: str | None) -> None:
    names = _names(tmp_path)
    (tmp_path / "sub").mkdir()
    os.symlink("/", tmp_path / "to-root")
    call = file_ops.listdir_call(str(tmp_path), False, None)
    expected = sorted([*(n.decode("utf-8", "surrogateescape") for n in names), "sub", "to-root"])
    assert file_ops.listing(_local(call, tools), call) == expected
    call = file_ops.listdir_call(str(tmp_path), True, None)
    entries = {e.name: e.stat for e in file_ops.detailed_listing(_local(call, tools), call)}
    assert entries["to-root"].type is FileType.SYMLINK  # reported, not followed
    assert entries["sub"].type is FileType.DIRECTORY
    assert entries["\udcff\udcfe-raw"].size == len(b"\xff\xfe-raw")


def test_stat_and_its_errors(tmp_path: Path, tools: str | None) -> None:
    target = tmp_path / "\udcff file"
    target.write_bytes(b"12345")
    target.chmod(0o640)
    os.symlink("/nowhere", tmp_path / "dangling")
    found = file_ops.stat_result(_local(file_ops.stat_call(str(target), False), tools))
    assert (found.type, found.size, found.mode, found.uid) == (FileType.FILE, 5, 0o640, os.getuid())
    link = file_ops.stat_call(str(tmp_path / "dangling"), False)
    assert file_ops.stat_result(_local(link, tools)).type is FileType.SYMLINK
    with pytest.raises(sandboxer.SandboxFileNotFound):
        _local(file_ops.stat_call(str(tmp_path / "dangling"), True), tools)
    with pytest.raises(sandboxer.SandboxFileError) as not_a_directory:
        _local(file_ops.listdir_call(str(target), False, None), tools)
    assert not_a_directory.value.errno == errno.ENOTDIR


def test_remove_never_follows_a_symlink(tmp_path: Path, tools: str | None) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("kept")
    tree = tmp_path / "tree"
    (tree / "deep").mkdir(parents=True)
    os.symlink(precious, tree / "deep" / "in")
    os.symlink(precious, tmp_path / "link")
    with pytest.raises(sandboxer.SandboxFileError) as refused:
        _local(file_ops.remove_call(str(tree), False), tools)
    assert refused.value.errno == errno.ENOTEMPTY and "recursive=True" in str(refused.value)
    _local(file_ops.remove_call(str(tmp_path / "link"), False), tools)
    _local(file_ops.remove_call(str(tree), True), tools)
    assert sorted(os.listdir(tmp_path)) == ["precious"]
    assert (precious / "keep").read_text() == "kept"


def test_mkdir_modes_parents_and_exist_ok(tmp_path: Path, tools: str | None) -> None:
    deep = str(tmp_path / "a" / "b")
    with pytest.raises(sandboxer.SandboxFileNotFound, match="parents=True"):
        _local(file_ops.mkdir_call(deep, False, False, 0o755), tools)
    _local(file_ops.mkdir_call(deep, True, False, 0o777), tools)
    assert os.stat(deep).st_mode & 0o7777 == 0o777  # no umask narrows it
    with pytest.raises(sandboxer.SandboxFileError, match="exist_ok=True") as exists:
        _local(file_ops.mkdir_call(deep, True, False, 0o755), tools)
    assert exists.value.errno == errno.EEXIST
    _local(file_ops.mkdir_call(deep, False, True, 0o755), tools)
    os.symlink("/nowhere", tmp_path / "dangling")
    with pytest.raises(sandboxer.SandboxFileError):
        _local(file_ops.mkdir_call(str(tmp_path / "dangling"), False, True, 0o755), tools)


# --- hostile output --------------------------------------------------------------------
LIST = file_ops.listdir_call("/d", False, 3)
DETAIL = file_ops.listdir_call("/d", True, 3)


@pytest.mark.parametrize(
    "output",
    [
        b"./a\0./b",  # no final NUL
        b"a\0",  # not under ./
        b"./a/b\0",  # a path, not a name
        b"./\0",
        b"./..\0",
        b"./" + b"x" * 256 + b"\0",
    ],
)
def test_listings_that_are_no_names_are_refused(output: bytes) -> None:
    with pytest.raises(sandboxer.EngineError):
        file_ops.listing(output, LIST)


@pytest.mark.parametrize(
    "record",
    [b"./a", b"81a4 1 0 0\n./a", b"81a4 x 0 0 0\n./a", b"81a4 1 0 0 0 \n./a", b"-1 1 0 0 0\n./a"],
)
def test_detail_fields_must_be_numbers(record: bytes) -> None:
    with pytest.raises(sandboxer.EngineError):
        file_ops.detailed_listing(record + b"\0", DETAIL)


def test_a_name_holding_a_forged_record_stays_one_name() -> None:
    forged = b"./evil\n81a4 9 0 0 0\nfake"
    [entry] = file_ops.detailed_listing(b"41ed 4 0 0 -5\n" + forged + b"\0", DETAIL)
    assert entry.name == "evil\n81a4 9 0 0 0\nfake"
    assert entry.stat == file_ops.FileStat(FileType.DIRECTORY, 4, 0o755, 0, 0, -5)


def test_more_entries_than_max_entries_is_too_large() -> None:
    with pytest.raises(sandboxer.OutputTooLarge, match="max_entries"):
        file_ops.listing(b"./a\0./b\0./c\0./d\0", LIST)


def test_output_past_the_cap_kills_the_script() -> None:
    closed: list[bool] = []
    endless = _generator([("stdout", b"./x\0" * 1000)] * 100, ExitStatus(0), closed)
    with pytest.raises(sandboxer.OutputTooLarge):
        file_ops.run(LIST, endless, 5)
    assert closed == [True]


def test_a_timeout_is_exec_timeout() -> None:
    with pytest.raises(sandboxer.ExecTimeout):
        file_ops.run(LIST, _generator([], ExitStatus(-9, timed_out=True)), 5)


@pytest.mark.parametrize(
    ("stderr", "code", "error", "number"),
    [
        (b"rm: can't remove '/d': Permission denied\n", 1, sandboxer.SandboxPermissionError, 13),
        (b"rm: '/d': Operation not permitted\n", 1, sandboxer.SandboxPermissionError, 1),
        (b"stat: can't stat '/d': No such file or directory\n", 1,
         sandboxer.SandboxFileNotFound, 2),
        # A planted name cannot forge the reason: strerror ends the real message.
        (b"rm: can't remove 'a: No such file or directory': Permission denied\n", 1,
         sandboxer.SandboxPermissionError, 13),
        (b"", 100 + errno.EEXIST, sandboxer.SandboxFileError, errno.EEXIST),
        (b"x" * 10000 + b": Directory not empty\n", 1, sandboxer.SandboxFileError, 39),
    ],
)  # fmt: skip
def test_errors_are_read_from_the_last_message(
    stderr: bytes, code: int, error: type[Exception], number: int
) -> None:
    with pytest.raises(error) as raised:
        file_ops.run(LIST, _generator([("stderr", stderr)], ExitStatus(code)), 5)
    assert getattr(raised.value, "errno", None) == number


def test_an_unknown_failure_is_an_engine_error_with_its_message() -> None:
    with pytest.raises(sandboxer.EngineError, match=r"exit 127.*not found"):
        file_ops.run(
            LIST, _generator([("stderr", b"sh: busybox: not found\n")], ExitStatus(127)), 5
        )


# --- arguments, checked before the engine ------------------------------------------------
@pytest.fixture
def sandbox() -> Iterator[sandboxer.Sandbox]:
    with sandboxer.launch(backend="fake") as sb:
        yield sb


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda sb: sb.listdir("relative"), "path"),
        (lambda sb: sb.listdir("/a\0b"), "path"),
        (lambda sb: sb.listdir(b"/tmp"), "path"),
        (lambda sb: sb.stat("/tmp/\ud800"), "path"),  # no byte stands behind it
        (lambda sb: sb.remove("/"), "path"),
        (lambda sb: sb.remove("/tmp/.."), "path"),
        (lambda sb: sb.mkdir("/"), "path"),
        (lambda sb: sb.listdir("/tmp", max_entries=0), "max_entries"),
        (lambda sb: sb.listdir("/tmp", max_entries=True), "max_entries"),
        (lambda sb: sb.listdir("/tmp", detail=1), "detail"),
        (lambda sb: sb.stat("/tmp", follow_symlinks="yes"), "follow_symlinks"),
        (lambda sb: sb.remove("/tmp/x", recursive=None), "recursive"),
        (lambda sb: sb.mkdir("/tmp/x", mode=0o10000), "mode"),
        (lambda sb: sb.mkdir("/tmp/x", exist_ok=1), "exist_ok"),
        (lambda sb: sb.write_file("/tmp/x/y", b"", parents="yes"), "parents"),
        (lambda sb: sb.exists("/tmp", timeout=0), "timeout"),
    ],
)
def test_bad_arguments_are_refused_before_the_engine(
    sandbox: sandboxer.Sandbox, call: object, field: str
) -> None:
    calls = FakeBackend.sandboxes[sandbox.name].calls
    with pytest.raises(sandboxer.InvalidSpec) as refused:
        call(sandbox)  # type: ignore[operator]
    assert refused.value.field == field
    assert calls == []


def test_calls_run_as_the_sandboxs_user_with_the_backends_busybox(
    sandbox: sandboxer.Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    exec_ = FakeBackend.exec

    def record(
        self: FakeBackend, handle: sandboxer.Handle, request: sandboxer.ExecRequest
    ) -> ExecGenerator:
        seen.append(request)
        return exec_(self, handle, request)

    monkeypatch.setattr(FakeBackend, "exec", record)
    monkeypatch.setattr(FakeBackend, "busybox", lambda self, handle: "/.helper/busybox")
    sandbox.mkdir("/tmp/\udcff")
    assert sandbox.exists("/tmp/\udcff")
    [made, looked] = seen
    assert made.argv[:3] == ("/.helper/busybox", "sh", "-c")
    assert made.argv[4:] == (file_ops.SCRIPT_NAME, "/.helper/busybox", "0", "0", "755")
    assert made.stdin == b"/tmp/\xff"  # the path's bytes, never in argv
    assert made.user == "1000:1000" == looked.user  # the hardened profile's user


def test_own_tools_are_found_through_path(sandbox: sandboxer.Sandbox) -> None:
    request = file_ops.stat_call("/tmp", False).request(None, None, 1.0)
    assert request.argv[0] == "/bin/sh" and request.argv[4] == ""


def test_incus_boots_name_their_busybox() -> None:
    assert _boot.Boot(_boot.Init.HELPER).busybox == "/.sandboxer/busybox"
    assert _boot.Boot(_boot.Init.BUILTIN).busybox == "/bin/busybox"
    assert _boot.Boot(_boot.Init.OWN).busybox is None
