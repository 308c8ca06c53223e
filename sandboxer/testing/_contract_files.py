"""Contract: listdir, stat, exists, remove and mkdir, on the suite's one shared sandbox.

`FilesContract` holds for every backend (the in-memory fake included); `KernelFilesContract`
needs a real file system: symlinks, owners and permissions. Each test works in a
directory of its own under /tmp, which the hardened profile keeps writable.
"""

from __future__ import annotations

import errno
import uuid

import pytest

import sandboxer
from sandboxer import FileType, Sandbox

# Names a sandbox may hold that a line- or text-based reader would get wrong.
HOSTILE_NAMES = ("with space", "new\nline", "\udcff\udcfe-not-utf8", "-dash", "tab\tand'quote\"")


def _fresh(sb: Sandbox) -> str:
    path = f"/tmp/files-{uuid.uuid4().hex[:8]}"
    sb.mkdir(path)
    return path


class FilesContract:
    def test_listdir_names_types_and_sizes(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        for name in HOSTILE_NAMES:
            shared.write_file(f"{top}/{name}", name.encode("utf-8", "surrogateescape"))
        shared.mkdir(f"{top}/sub")
        assert shared.listdir(top) == sorted([*HOSTILE_NAMES, "sub"])
        entries = {entry.name: entry.stat for entry in shared.listdir(top, detail=True)}
        assert entries["sub"].type is FileType.DIRECTORY
        for name in HOSTILE_NAMES:
            assert entries[name].type is FileType.FILE
            assert entries[name].size == len(name.encode("utf-8", "surrogateescape"))
        assert shared.listdir(f"{top}/sub") == []

    def test_stat_reports_type_size_and_the_users_ownership(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        shared.write_file(f"{top}/file", b"12345")
        found = shared.stat(f"{top}/file")
        assert (found.type, found.size) == (FileType.FILE, 5)
        uid = int(shared.exec(["id", "-u"]).stdout)
        assert found.uid == uid  # written as the sandbox's user
        assert shared.stat(top).type is FileType.DIRECTORY

    def test_hostile_names_round_trip_through_every_call(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        for name in HOSTILE_NAMES:
            path = f"{top}/{name}"
            shared.mkdir(f"{path}/inner", parents=True)  # write_file's directory goes in argv
            assert shared.exists(path)
            assert shared.stat(path).type is FileType.DIRECTORY
            assert shared.listdir(path) == ["inner"]
            shared.remove(path, recursive=True)
            assert not shared.exists(path)
        assert shared.listdir(top) == []

    def test_remove_refuses_a_full_directory_unless_recursive(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        shared.write_file(f"{top}/tree/deep/file", b"x", parents=True)
        with pytest.raises(sandboxer.SandboxFileError) as refused:
            shared.remove(f"{top}/tree")
        assert refused.value.errno == errno.ENOTEMPTY
        assert shared.exists(f"{top}/tree/deep/file")  # nothing went
        shared.remove(f"{top}/tree/deep/file")
        shared.remove(f"{top}/tree/deep")  # empty now: no recursive needed
        shared.write_file(f"{top}/tree/again/file", b"x", parents=True)
        shared.remove(f"{top}/tree", recursive=True)
        assert shared.listdir(top) == []

    def test_mkdir_parents_and_exist_ok(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        with pytest.raises(sandboxer.SandboxFileNotFound):
            shared.mkdir(f"{top}/a/b")
        shared.mkdir(f"{top}/a/b", parents=True)
        assert shared.stat(f"{top}/a").type is FileType.DIRECTORY
        with pytest.raises(sandboxer.SandboxFileError) as exists:
            shared.mkdir(f"{top}/a/b")
        assert exists.value.errno == errno.EEXIST
        shared.mkdir(f"{top}/a/b", exist_ok=True)
        shared.mkdir(f"{top}/a/b", parents=True, exist_ok=True)
        shared.write_file(f"{top}/file", b"x")
        with pytest.raises(sandboxer.SandboxFileError):  # a file is no existing directory
            shared.mkdir(f"{top}/file", exist_ok=True)

    def test_write_file_makes_missing_parents_only_when_asked(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        with pytest.raises(sandboxer.SandboxError):
            shared.write_file(f"{top}/x/y/z.txt", b"no")
        shared.write_file(f"{top}/x/y/z.txt", b"yes", parents=True)
        assert shared.read_file(f"{top}/x/y/z.txt") == b"yes"
        assert shared.stat(f"{top}/x/y").type is FileType.DIRECTORY

    def test_missing_paths(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        assert not shared.exists(f"{top}/none")
        for call in (shared.stat, shared.listdir, shared.remove):
            with pytest.raises(sandboxer.SandboxFileNotFound):
                call(f"{top}/none")
        shared.write_file(f"{top}/file", b"x")
        with pytest.raises(sandboxer.SandboxFileError) as not_a_directory:
            shared.listdir(f"{top}/file")
        assert not_a_directory.value.errno == errno.ENOTDIR
        assert not shared.exists(f"{top}/file/below")

    def test_a_listing_past_max_entries_is_refused(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        for index in range(5):
            shared.write_file(f"{top}/f{index}", b"")
        assert len(shared.listdir(top, max_entries=5)) == 5
        with pytest.raises(sandboxer.OutputTooLarge):
            shared.listdir(top, max_entries=4)
        with pytest.raises(sandboxer.OutputTooLarge):
            shared.listdir(top, detail=True, max_entries=4)


class KernelFilesContract:
    def test_modes_are_set_and_reported(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        shared.write_file(f"{top}/file", b"x", mode=0o640)
        assert shared.stat(f"{top}/file").mode == 0o640
        shared.mkdir(f"{top}/a/b", parents=True, mode=0o700)
        shared.mkdir(f"{top}/open", mode=0o777)  # not narrowed by a umask
        modes = {entry.name: entry.stat.mode for entry in shared.listdir(top, detail=True)}
        assert (modes["file"], modes["open"]) == (0o640, 0o777)
        assert shared.stat(f"{top}/a/b").mode == 0o700

    def test_a_symlink_is_removed_as_a_link_never_followed(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        shared.write_file(f"{top}/precious/keep", b"kept", parents=True)
        script = 'ln -s / "$1/to-root" && mkdir "$1/tree" && ln -s "$1/precious" "$1/tree/in"'
        assert shared.exec(["sh", "-c", script, "sh", top]).exit_code == 0
        assert shared.stat(f"{top}/to-root").type is FileType.SYMLINK
        assert shared.stat(f"{top}/to-root", follow_symlinks=True).type is FileType.DIRECTORY
        assert "etc" in shared.listdir(f"{top}/to-root")  # listdir follows, as os.listdir
        shared.remove(f"{top}/to-root")
        shared.remove(f"{top}/tree", recursive=True)
        assert shared.listdir(top) == ["precious"]
        assert shared.read_file(f"{top}/precious/keep") == b"kept"
        assert shared.exists("/etc")

    def test_a_dangling_symlink_exists_unless_followed(self, shared: Sandbox) -> None:
        top = _fresh(shared)
        assert shared.exec(["ln", "-s", "/nowhere/at/all", f"{top}/dangling"]).exit_code == 0
        assert shared.exists(f"{top}/dangling")
        assert not shared.exists(f"{top}/dangling", follow_symlinks=True)
        assert shared.listdir(top) == ["dangling"]
        [entry] = shared.listdir(top, detail=True)
        assert entry.stat.type is FileType.SYMLINK
        with pytest.raises(sandboxer.SandboxFileError):
            shared.mkdir(f"{top}/dangling", exist_ok=True)
        shared.remove(f"{top}/dangling")
        assert shared.listdir(top) == []

    def test_calls_run_as_the_sandboxs_user(self, shared: Sandbox) -> None:
        # Root's private directory beside the user's files: the file calls act as the
        # sandbox's user (hardened: uid 1000), so they can neither read nor remove it.
        private = f"/tmp/root-only-{uuid.uuid4().hex[:8]}"
        script = 'mkdir -m 700 "$1" && echo secret > "$1/secret"'
        assert shared.exec(["sh", "-c", script, "sh", private], user="0").exit_code == 0
        assert shared.stat(private).uid == 0
        with pytest.raises(sandboxer.SandboxPermissionError):
            shared.listdir(private)
        with pytest.raises(sandboxer.SandboxPermissionError):
            shared.stat(f"{private}/secret")
        with pytest.raises(sandboxer.SandboxPermissionError):
            shared.remove(private, recursive=True)
        with pytest.raises(sandboxer.SandboxPermissionError):
            shared.mkdir(f"{private}/planted")
        still = shared.exec(["cat", f"{private}/secret"], user="0")
        assert (still.exit_code, still.stdout) == (0, b"secret\n")
