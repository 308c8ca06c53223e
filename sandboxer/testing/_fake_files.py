"""The fake engine's answer to the file calls' scripts (sandboxer._file_ops): the same
output and exit codes as busybox would give, computed over the in-memory tree.

The tree has no symlinks, owners or permissions, and the calls do not see into mounts.
"""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._backend import ExecGenerator, ExecRequest, ExitStatus
from .._file_ops import SCRIPT_NAME, SCRIPTS

if TYPE_CHECKING:
    from ._fake import _FakeSandbox

_VERBS = {script: verb for verb, script in SCRIPTS.items()}
_DIRECTORY, _FILE = 0o040755, 0o100644
_Answer = tuple[bytes, bytes, int]  # stdout, stderr, exit code


def file_call(argv: Sequence[str]) -> tuple[str, tuple[str, ...]] | None:
    """(verb, arguments) if `argv` runs one of the file calls' scripts."""
    if "-c" not in argv[:3]:
        return None
    at = argv.index("-c")
    verb = _VERBS.get(argv[at + 1]) if len(argv) > at + 3 else None
    if verb is None or argv[at + 2] != SCRIPT_NAME:
        return None
    return verb, tuple(argv[at + 4 :])  # past $0 and the busybox


def run_file_call(
    sandbox: _FakeSandbox, request: ExecRequest, verb: str, args: tuple[str, ...]
) -> ExecGenerator:
    path = (request.stdin or b"").decode("utf-8", "surrogateescape")
    out, err, code = getattr(_Tree(sandbox, request.user), "op_" + verb)(path, *args)
    if out:
        yield "stdout", out
    if err:
        yield "stderr", err
    return ExitStatus(code)


def _failed(message: str) -> _Answer:
    """A tool's failure: its message on stderr (names may hold raw bytes), exit code 1."""
    return b"", f"{message}\n".encode("utf-8", "surrogateescape"), 1


def _missing(tool: str, path: str) -> _Answer:
    return _failed(f"{tool}: can't stat '{path}': No such file or directory")


def _own(code: int) -> _Answer:
    """The exit code a script gives when it finds the reason itself (100 + errno)."""
    return b"", b"", 100 + code


_DONE: _Answer = (b"", b"", 0)


class _Tree:
    def __init__(self, sandbox: _FakeSandbox, user: str | None) -> None:
        self.files = sandbox.files
        self.dirs = sandbox.dirs
        name = (user or "0").split(":")[0]
        self.uid = int(name) if name.isdigit() else 0

    def _children(self, path: str) -> list[str]:
        return [p for p in [*self.files, *self.dirs] if p != path and posixpath.dirname(p) == path]

    def _fields(self, path: str) -> bytes:
        if path in self.dirs:
            mode, size = _DIRECTORY, 4096
        else:
            mode, size = _FILE, len(self.files[path])
        return f"{mode:x} {size} {self.uid} {self.uid} 0".encode()

    def op_list(self, path: str, mode: str) -> _Answer:
        if path not in self.dirs:
            return _own(errno.ENOTDIR) if path in self.files else _missing("stat", path)
        out = b""
        for child in self._children(path):
            name = b"./" + posixpath.basename(child).encode("utf-8", "surrogateescape") + b"\0"
            out += self._fields(child) + b"\n" + name if mode == "detail" else name
        return out, b"", 0

    def op_stat(self, path: str, follow: str) -> _Answer:
        if path not in self.dirs and path not in self.files:
            return _missing("stat", path)
        return self._fields(path) + b"\n", b"", 0

    def op_remove(self, path: str, mode: str) -> _Answer:
        if path in self.files:
            del self.files[path]
            return _DONE
        if path not in self.dirs:
            return _missing("rm", path)
        if self._children(path) and mode != "recursive":
            return _failed(f"rmdir: '{path}': Directory not empty")
        for inside in [p for p in self.files if p.startswith(path + "/")]:
            del self.files[inside]
        self.dirs -= {p for p in self.dirs if p == path or p.startswith(path + "/")}
        return _DONE

    def op_create(self, path: str, parents: str, exist_ok: str, mode: str) -> _Answer:
        if path in self.dirs or path in self.files:
            return _DONE if exist_ok == "1" and path in self.dirs else _own(errno.EEXIST)
        missing = []
        while path not in self.dirs:
            if path in self.files:
                return _failed(f"mkdir: can't create '{path}': Not a directory")
            missing.append(path)
            path = posixpath.dirname(path)
        if len(missing) > 1 and parents != "1":
            return _failed(f"mkdir: can't create '{missing[0]}': No such file or directory")
        self.dirs.update(missing)
        return _DONE
