"""write_file and read_file of one regular file straight through the sandbox's root, as
its user: no exec, so no 20 ms exec round trip, and no tar.

Incus' exec costs about 20 ms a call, and its file API acts as the container's root (it
would read what the sandbox's user may not). When the daemon is local and this process
is root, a file moves instead through /proc/PID/root of the sandbox's init, by a thread
of our own that first becomes the sandbox's user: its host uid and gid (the init's id
maps), no supplementary groups, hence no capabilities. setresuid and friends called as
raw syscalls change the calling thread only (glibc's wrappers would change every
thread); the thread ends with its work. The kernel then checks every permission as it
does for the user's own commands, and paths resolve with openat2(RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS): "..", absolute symlinks and mounts stay inside the sandbox's view,
/proc's magic links are refused.

Only regular files take this way, and they are opened through an O_PATH descriptor
checked first, so no device, fifo or socket is ever opened from the host (the sandbox's
devices cgroup does not hold for us). Whatever else (a symlink, directory or special file
at the path) returns None, and any error raises OSError: the caller then goes the tar way
through exec, which fails, or succeeds, exactly as before. Even a missing file: a path
through the sandbox's /proc/self exists for its user, not for a thread outside its pid
namespace.

Only plain file systems take it too (tmpfs and disk ones; see _PLAIN_FILE_SYSTEMS).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import platform
import select
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import BinaryIO, TypeVar

import attrs

from sandboxer.backend import EngineError, ExecTimeout

T = TypeVar("T")

# setgroups, setresgid, setresuid, capset by machine: raw syscalls, one thread's
# credentials.
_CREDENTIALS = {"x86_64": (116, 119, 117, 126), "aarch64": (159, 149, 147, 91)}
_CAPABILITY_VERSION_3 = 0x20080522
# Where files are plain data: tmpfs, btrfs, ext2/3/4, xfs, zfs, overlayfs (f_type). Not
# /proc or /sys (their files answer by who asks, and a sandbox's LSM profile may hide
# some from its user), nor FUSE (a sandbox's daemon could stall us): the tar way.
_PLAIN_FILE_SYSTEMS = frozenset(
    {0x01021994, 0x9123683E, 0xEF53, 0x58465342, 0x2FC12FC1, 0x794C7630}
)
_OPENAT2 = 437  # the same number on every architecture
_RESOLVE_NO_MAGICLINKS, _RESOLVE_IN_ROOT = 0x02, 0x10
_PR_GET_DUMPABLE, _PR_SET_DUMPABLE = 3, 4
_CHUNK = 1024 * 1024
_TEMPORARY = ".sandboxer-write-"
# busybox tar, as the sandbox's user, applied its umask (022) and kept no set-id bits:
# the same modes as files written the tar way.
_MODE_KEPT = 0o7777 & ~0o6022

_libc = ctypes.CDLL(None, use_errno=True)
# Changing a thread's ids makes the whole process undumpable: restored to this after.
_DUMPABLE = _libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _open_inside(root: int, path: str, flags: int) -> int:
    """openat2 of a sandbox path (absolute or not) below `root`, never leaving it."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    name = path.lstrip("/").encode("utf-8", "surrogateescape") or b"."
    return _check(_libc.syscall(_OPENAT2, root, name, ctypes.byref(how), ctypes.sizeof(how)), path)


@attrs.frozen
class Root:
    """The sandbox's root directory as its init sees it, and who its user is on the host:
    opened for one call, by `open_root`, and closed by the thread of `as_user` (a call
    that timed out leaves it in use there; a number closed under it could be reused)."""

    directory: int  # an O_PATH descriptor of /proc/PID/root
    pidfd: int  # the init: once it ends, `directory` is a stale view
    uid: int  # the sandbox's user, as host ids
    gid: int

    def alive(self) -> bool:
        return not select.select([self.pidfd], [], [], 0)[0]  # readable: the init ended

    def close(self) -> None:
        for fd in (self.directory, self.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


def _plain(fd: int) -> bool:
    """Whether `fd` is on a file system of plain data files (statfs' f_type, its first
    field: a long on Linux's 64-bit machines)."""
    buffer = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes
    _check(_libc.fstatfs(fd, buffer), "fstatfs")
    return ctypes.c_long.from_buffer(buffer).value in _PLAIN_FILE_SYSTEMS


def supported() -> bool:
    """Whether this process can act as a sandbox's user on the host at all."""
    return os.geteuid() == 0 and platform.machine() in _CREDENTIALS


def _host_id(maps: str, inside: int) -> int | None:
    for line in maps.splitlines():
        first, host, count = (int(field) for field in line.split())
        if first <= inside < first + count:
            return host + inside - first
    return None


def open_root(pid: int, cgroup: str, uid: int, gid: int) -> Root | None:
    """The root of the process `pid`, once it is known to be the sandbox's (its cgroup
    is `cgroup`) and to be alive still; None if it is not, or its ids are not mapped."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    fds = [pidfd]
    try:
        fds.append(os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        with open(f"/proc/{pid}/cgroup") as groups:
            paths = [line.split(":", 2)[2] for line in groups.read().splitlines()]
        ours = all(path == cgroup or path.startswith(cgroup + "/") for path in paths)
        with open(f"/proc/{pid}/uid_map") as uids, open(f"/proc/{pid}/gid_map") as gids:
            host_uid, host_gid = _host_id(uids.read(), uid), _host_id(gids.read(), gid)
        root = Root(fds[1], pidfd, host_uid or 0, host_gid or 0)
        # Alive after the reads: /proc/PID was the process pidfd names, not a pid reused.
        # Host uid 0 (a privileged container's root, or no map): never this way.
        if paths and ours and host_uid and host_gid and root.alive():
            return root
    except (OSError, ValueError, IndexError):
        pass
    for fd in fds:
        os.close(fd)
    return None


def as_user(root: Root, work: Callable[[], T], timeout: float) -> T:
    """`work()` in a thread of its own that is the sandbox's user, then `root` closed;
    ExecTimeout past `timeout` (the thread is left to end by itself)."""
    outcome: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            setgroups, setresgid, setresuid, capset = _CREDENTIALS[platform.machine()]
            _check(_libc.syscall(setgroups, 0, None), "setgroups")
            _check(_libc.syscall(setresgid, root.gid, root.gid, root.gid), "setresgid")
            _check(_libc.syscall(setresuid, root.uid, root.uid, root.uid), "setresuid")
            # Leaving uid 0 already cleared them, unless securebits keep them: cleared.
            header, none = _CapHeader(_CAPABILITY_VERSION_3, 0), (ctypes.c_uint32 * 6)()
            _check(_libc.syscall(capset, ctypes.byref(header), none), "capset")
            # Changing ids made the process undumpable, so /proc/thread-self would be
            # root's: dumpable again, it is this thread's (restored below).
            _libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
            outcome.append(work())
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)
        finally:
            root.close()

    thread = threading.Thread(target=run, name="sandboxer-incus-files", daemon=True)
    thread.start()
    thread.join(timeout)
    _libc.prctl(_PR_SET_DUMPABLE, _DUMPABLE, 0, 0, 0)
    if thread.is_alive():
        raise ExecTimeout(("sandboxer-files",), timeout, b"", b"")
    if failed:
        raise failed[0]
    return outcome[0]


# --- as the user (inside `as_user`) ---------------------------------------------------
def open_regular(root: Root, path: str) -> int | None:
    """A descriptor to read the regular file at `path`; None if something else is there.

    Opened by its O_PATH descriptor (through /proc/thread-self/fd): what was checked to be
    a regular file is what is opened, whatever replaces it at `path` meanwhile."""
    located = _open_inside(root.directory, path, os.O_PATH | os.O_NOFOLLOW)
    try:
        if not stat.S_ISREG(os.fstat(located).st_mode) or not _plain(located):
            return None
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        return os.open(f"/proc/thread-self/fd/{located}", flags)
    finally:
        os.close(located)


@attrs.frozen
class Member:
    """put_archive's archive when it holds one regular file (write_file's, or copy_in's
    of a file)."""

    name: str
    data: bytes
    mode: int
    mtime: int  # 0: none given (write_file's), the file keeps the time it is written


def replace(root: Root, directory: str, member: Member) -> None:
    """Write `member` as a new file in `directory`, then rename it over its name, as tar
    replaces what stood there (a symlink included: it is replaced, not followed)."""
    parent = _open_inside(root.directory, directory, os.O_PATH | os.O_DIRECTORY)
    temporary = _TEMPORARY + os.urandom(8).hex()
    try:
        if not _plain(parent):
            raise OSError(errno.EOPNOTSUPP, f"{directory}: not a plain file system")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o600, dir_fd=parent)
        try:
            with open(fd, "wb", closefd=False) as target:
                target.write(member.data)
            os.fchmod(fd, member.mode & _MODE_KEPT)
            if member.mtime:
                os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        os.rename(temporary, member.name, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=parent)
        raise
    finally:
        os.close(parent)


# --- on the host side -----------------------------------------------------------------
def single_file(archive: bytes) -> Member | None:
    """The one regular file `archive` (put_archive's) holds; None if it holds more, or
    something else."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        members = tar.getmembers()
        if len(members) != 1 or not members[0].isreg():
            return None
        name = members[0].name
        if "/" in name or name in ("", ".", ".."):
            return None
        source = tar.extractfile(members[0])
        assert source is not None  # a regular member has content
        return Member(name, source.read(), members[0].mode, int(members[0].mtime))


def archive_of(fd: int, name: str, path: str, timeout: float) -> Generator[bytes, None, None]:
    """The tar stream `tar -c` would give of the opened regular file `fd` called `name`;
    the reader stops reading once past its limit (the header says the size first), and
    ExecTimeout past `timeout`, as a packing would be killed."""
    # A file object now: a stream dropped unread still closes `fd` (when collected).
    source = os.fdopen(fd, "rb", buffering=0)
    return _archive(source, name, path, timeout, time.monotonic() + timeout)


def _archive(
    source: BinaryIO, name: str, path: str, timeout: float, deadline: float
) -> Generator[bytes, None, None]:
    with source:
        status = os.fstat(source.fileno())
        info = tarfile.TarInfo(name)
        info.size, info.mtime = status.st_size, int(status.st_mtime)
        info.mode = stat.S_IMODE(status.st_mode)
        yield info.tobuf(format=tarfile.GNU_FORMAT)
        for chunk in _exactly(source.read, status.st_size, path):
            if time.monotonic() > deadline:
                raise ExecTimeout(("sandboxer-files",), timeout, b"", b"")
            yield chunk
        padding = -status.st_size % tarfile.BLOCKSIZE
        yield b"\0" * (padding + 2 * tarfile.BLOCKSIZE)


def _exactly(read: Callable[[int], bytes], size: int, path: str) -> Iterator[bytes]:
    left = size
    while left:
        chunk = read(min(left, _CHUNK))
        if not chunk:
            raise EngineError(f"{path} shrank while it was read from the sandbox")
        left -= len(chunk)
        yield chunk
