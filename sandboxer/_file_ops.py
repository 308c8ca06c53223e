"""File calls inside a sandbox (listdir, stat, exists, remove, mkdir): the commands they
run there and how their output is read.

Each call is one short busybox sh script run through exec, as the sandbox's user, with
a deadline. Its tools are those of `Backend.busybox(handle)`: sandboxer's static helper
where the engine mounts it (an OCI image may hold no shell, or tools of its own making),
the built-in images' own busybox, else the sandbox's tools found through its PATH (the
scripts keep to what busybox and GNU tools share). The path goes in through stdin, as
bytes: an engine's exec takes its argv as JSON text, which cannot carry a name that is
not UTF-8.

The boundary: everything the scripts print is hostile (the sandbox's user may plant any
name, swap a directory for a symlink mid-call, or fill a directory without end). Names
arrive NUL-terminated; stat fields are numbers only, checked field by field; a listing
is bounded (`max_entries`). The scripts run as the sandbox's own user with its own view
of the file system, so what a symlink swapped in reaches is what that user could reach
anyway: nothing here runs with more rights than the user's own commands.

Names are `str`; bytes that are not UTF-8 map to lone surrogates ("surrogateescape",
as `os.listdir` does), and such a name passed back to a call means the same bytes.
"""

from __future__ import annotations

import enum
import errno
import os
import posixpath
import re
import stat
from collections.abc import Mapping

import attrs

from ._backend import ExecGenerator, ExecRequest
from ._errors import (
    EngineError,
    ExecTimeout,
    InvalidSpec,
    OutputTooLarge,
    SandboxError,
    SandboxFileError,
    SandboxFileNotFound,
    SandboxPermissionError,
)

DEFAULT_MAX_ENTRIES = 10_000
# What a call's script names itself by ($0), so that error messages say who spoke.
SCRIPT_NAME = "sandboxer-files"
# A script that finds the reason itself exits with 100 + errno; tools exit 1 on failure
# (busybox and GNU alike) and their message ends with strerror, which is read instead.
_ERRNO_EXIT = 100
_STDERR_TAIL = 4096
_NAME_MAX = 255  # bytes in one name on Linux file systems
# A listing record: the stat fields (at most 8+20+10+10+20 digits and 5 separators),
# "./", a name and its NUL.
_RECORD_MAX = 80 + 2 + _NAME_MAX + 1
_STAT_MAX = 128

# stat -c: the raw mode in hex (type and permission bits), size, uid, gid, mtime.
_FORMAT = "%f %s %u %g %Y"
_FIELDS = re.compile(rb"([0-9a-f]{1,8}) ([0-9]{1,20}) ([0-9]{1,10}) ([0-9]{1,10}) (-?[0-9]{1,20})")

# Every script starts the same way: $1 is the busybox ("" for the sandbox's own tools,
# then `$bb find` is `find`), the path is stdin (the x keeps a trailing newline).
_PROLOGUE = """bb=$1
shift
p=$($bb cat; echo x)
p=${p%x}
"""
# Follows a symlink to a directory, as os.listdir does. A failure past the checks is
# about an entry that changed meanwhile: the listing goes on without it.
_LISTDIR = (
    _PROLOGUE
    + f"""$bb stat -L -c %f -- "$p" >/dev/null || exit 1
[ -d "$p" ] || exit {_ERRNO_EXIT + errno.ENOTDIR}
[ -r "$p" ] && [ -x "$p" ] && cd -- "$p" || exit {_ERRNO_EXIT + errno.EACCES}
if [ "$1" = detail ]; then
    $bb find . -mindepth 1 -maxdepth 1 -exec $bb stat -c '{_FORMAT}' -- {{}} ';' -print0
else
    $bb find . -mindepth 1 -maxdepth 1 -print0
fi
exit 0
"""
)
# $1: -L to follow a symlink, else "".
_STAT = _PROLOGUE + f"""exec $bb stat $1 -c '{_FORMAT}' -- "$p"\n"""
# A symlink is removed as a link, whatever it points to; rm -r never follows one either.
# busybox's rm -r says nothing of a directory it cannot open: find then names it.
_REMOVE = (
    _PROLOGUE
    + """if [ -d "$p" ] && [ ! -L "$p" ]; then
    if [ "$1" = recursive ]; then
        $bb rm -r -- "$p" && exit 0
        $bb find "$p" >/dev/null
        exit 1
    fi
    exec $bb rmdir -- "$p"
fi
exec $bb rm -- "$p"
"""
)
# $1: parents (1/0), $2: exist_ok (1/0), $3: the mode in octal.
_MKDIR = (
    _PROLOGUE
    + f"""if [ -e "$p" ] || [ -L "$p" ]; then
    [ "$2" = 1 ] && [ -d "$p" ] && exit 0
    exit {_ERRNO_EXIT + errno.EEXIST}
fi
[ "$1" = 1 ] && exec $bb mkdir -p -m "$3" -- "$p"
exec $bb mkdir -m "$3" -- "$p"
"""
)


# By verb, for an engine that runs them some other way (the in-memory fake).
SCRIPTS = {"list": _LISTDIR, "stat": _STAT, "remove": _REMOVE, "create": _MKDIR}


class FileType(enum.StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"  # a device, fifo or socket


_TYPES = {
    stat.S_IFREG: FileType.FILE,
    stat.S_IFDIR: FileType.DIRECTORY,
    stat.S_IFLNK: FileType.SYMLINK,
}


@attrs.frozen
class FileStat:
    """What stat says of one path inside a sandbox, as the sandbox's user sees it."""

    type: FileType
    size: int
    mode: int  # permission bits, 0o7777 at most
    uid: int
    gid: int
    mtime: int  # seconds since the epoch


@attrs.frozen
class DirEntry:
    name: str
    stat: FileStat


@attrs.frozen
class FileCall:
    """One call's script, its arguments and stdin (the path), and its output cap."""

    verb: str  # a key of SCRIPTS, and the word messages use
    path: str
    args: tuple[str, ...]
    limit: int
    hints: Mapping[int, str] = attrs.field(factory=dict)  # errno -> what to do about it

    def request(self, busybox: str | None, user: str | None, timeout: float) -> ExecRequest:
        """The exec that runs this call with `busybox`'s applets (None: the sandbox's own
        tools through its PATH)."""
        shell = (busybox, "sh") if busybox else ("/bin/sh",)
        return ExecRequest(
            argv=(*shell, "-c", SCRIPTS[self.verb], SCRIPT_NAME, busybox or "", *self.args),
            env={},
            workdir="/",
            user=user,
            stdin=self.path.encode("utf-8", "surrogateescape"),
            timeout=timeout,
        )


# --- arguments -------------------------------------------------------------------------
def path_argument(field: str, path: object, *, root: bool = True) -> str:
    """An absolute path inside the sandbox, normalised; '/' only where `root` allows."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise InvalidSpec(field, f"expected an absolute path inside the sandbox, got {path!r}")
    normal = "/" + posixpath.normpath(path).lstrip("/")
    if normal == "/" and not root:
        raise InvalidSpec(field, "cannot be the sandbox's root '/'")
    try:
        normal.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise InvalidSpec(field, f"holds a character that is no text: {path!r}") from None
    return normal


def flag(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(field, f"expected True or False, got {value!r}")
    return value


def listdir_call(path: object, detail: object, max_entries: object) -> FileCall:
    checked = path_argument("path", path)
    if max_entries is None:
        max_entries = DEFAULT_MAX_ENTRIES
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries <= 0:
        raise InvalidSpec("max_entries", f"expected a positive number, got {max_entries!r}")
    mode = "detail" if flag("detail", detail) else "names"
    return FileCall("list", checked, (mode,), max_entries * _RECORD_MAX)


def stat_call(path: object, follow_symlinks: object) -> FileCall:
    follow = flag("follow_symlinks", follow_symlinks)
    return FileCall("stat", path_argument("path", path), ("-L" if follow else "",), _STAT_MAX)


# A recursive removal stops at what it may not remove, having removed what it could.
_PARTLY = {code: "part of the tree may be gone" for code in (errno.EACCES, errno.EPERM)}


def remove_call(path: object, recursive: object) -> FileCall:
    checked = path_argument("path", path, root=False)
    if flag("recursive", recursive):
        return FileCall("remove", checked, ("recursive",), 0, _PARTLY)
    hints = {errno.ENOTEMPTY: "a directory that is not empty; pass recursive=True to remove it"}
    return FileCall("remove", checked, ("single",), 0, hints)


def mkdir_call(path: object, parents: object, exist_ok: object, mode: object) -> FileCall:
    checked = path_argument("path", path, root=False)
    make_parents, accept = flag("parents", parents), flag("exist_ok", exist_ok)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise InvalidSpec("mode", f"expected permission bits (0 to 0o7777), got {mode!r}")
    hints = {
        errno.EEXIST: "and is no directory"
        if accept
        else "pass exist_ok=True to accept an existing directory"
    }
    if not make_parents:
        hints[errno.ENOENT] = "its parent directory is missing; pass parents=True"
    args = ("1" if make_parents else "0", "1" if accept else "0", f"{mode:o}")
    return FileCall("create", checked, args, 0, hints)


# --- running ---------------------------------------------------------------------------
def run(call: FileCall, generator: ExecGenerator, timeout: float) -> bytes:
    """The call's stdout, at most `call.limit` bytes; else the error it failed with.

    Only the tail of stderr is kept: the last error message is the one that counts."""
    stdout = bytearray()
    stderr = b""
    try:
        while True:
            try:
                stream, chunk = next(generator)
            except StopIteration as stop:
                status = stop.value
                break
            if stream == "stdout":
                stdout += chunk
                if len(stdout) > call.limit:
                    raise _too_much(call)
            else:
                stderr = (stderr + chunk)[-_STDERR_TAIL:]
    finally:
        generator.close()  # past the cap: the script is killed
    if status.timed_out:
        raise ExecTimeout((SCRIPT_NAME,), timeout, b"", stderr)
    if status.exit_code != 0:
        raise failure(call, status.exit_code, stderr)
    return bytes(stdout)


def _too_much(call: FileCall) -> SandboxError:
    if call.verb == "list":
        return OutputTooLarge(
            f"the listing of {call.path!r}",
            call.limit // _RECORD_MAX,
            "pass max_entries= a bigger cap to allow more",
            unit="entries",
        )
    return EngineError(f"{call.verb} {call.path!r}: the sandbox answered with too much output")


# strerror texts glibc and musl share, as busybox and GNU tools end their messages.
_KNOWN = (
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
    errno.ENOTEMPTY, errno.EISDIR, errno.EBUSY, errno.ELOOP, errno.ENAMETOOLONG,
    errno.ENOSPC, errno.EINVAL,
)  # fmt: skip


def reason(exit_code: int, stderr: bytes) -> int | None:
    """The errno a script failed with: its own exit code, else the strerror its tool's
    last message ends with (a name in the message comes before it, so cannot forge it)."""
    if exit_code - _ERRNO_EXIT in _KNOWN:
        return exit_code - _ERRNO_EXIT
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1] if lines else ""
    return next((code for code in _KNOWN if last.endswith(": " + os.strerror(code))), None)


def failure(call: FileCall, exit_code: int, stderr: bytes) -> SandboxError:
    code = reason(exit_code, stderr)
    if code is None:
        text = stderr.decode("utf-8", "replace").strip()[-500:]
        return EngineError(f"{call.verb} {call.path!r} failed (exit {exit_code}): {text}")
    message = f"{call.verb} {call.path!r}: {os.strerror(code)}"
    if code in call.hints:
        message += f" ({call.hints[code]})"
    if code == errno.ENOENT:
        return SandboxFileNotFound(code, message)
    if code in (errno.EACCES, errno.EPERM):
        return SandboxPermissionError(code, message)
    return SandboxFileError(code, message)


# --- parsing ---------------------------------------------------------------------------
def parse_stat(line: bytes) -> FileStat:
    found = _FIELDS.fullmatch(line)
    if found is None:
        raise EngineError(f"the sandbox's stat printed something else than numbers: {line[:80]!r}")
    raw = int(found[1], 16)
    return FileStat(
        type=_TYPES.get(stat.S_IFMT(raw), FileType.OTHER),
        size=int(found[2]),
        mode=stat.S_IMODE(raw),
        uid=int(found[3]),
        gid=int(found[4]),
        mtime=int(found[5]),
    )


def stat_result(output: bytes) -> FileStat:
    if not output.endswith(b"\n"):
        raise EngineError(f"the sandbox's stat printed an unfinished line: {output[:80]!r}")
    return parse_stat(output[:-1])


def _name(record: bytes) -> str:
    """The name out of find's "./NAME"; anything else is refused."""
    name = record[2:]
    if not record.startswith(b"./") or not name or b"/" in name or len(name) > _NAME_MAX:
        raise EngineError(f"the sandbox's find printed something else than a name: {record[:80]!r}")
    if name in (b".", b".."):
        raise EngineError(f"the sandbox's find printed {name!r} as an entry")
    return name.decode("utf-8", "surrogateescape")


def listing(output: bytes, call: FileCall) -> list[str]:
    return sorted(_name(record) for record in _records(output, call))


def detailed_listing(output: bytes, call: FileCall) -> list[DirEntry]:
    entries = []
    for record in _records(output, call):
        fields, newline, rest = record.partition(b"\n")
        if not newline:
            raise EngineError(f"the sandbox's listing lacks the fields of {record[:80]!r}")
        entries.append(DirEntry(_name(rest), parse_stat(fields)))
    return sorted(entries, key=lambda entry: entry.name)


def _records(output: bytes, call: FileCall) -> list[bytes]:
    *records, tail = output.split(b"\0")
    if tail:
        raise EngineError(f"the sandbox's listing of {call.path!r} ends mid-entry")
    if len(records) > call.limit // _RECORD_MAX:
        raise _too_much(call)
    return records
