"""Mount sources pinned for the length of a create, so no swap can redirect them.

Engines mount a source by path, and follow symlinks while they do. A local user (or a
sandbox with a writable mount of a parent) who can rename a component of that path
could swap in a symlink between sandboxer's check and the engine's mount. So each
source is opened once, component by component without following any link, checked to
be the very file the spec checked (device and inode), and bind-mounted from that
descriptor onto a private path that only root can reach. The engines mount the private
path; once the sandbox is created they hold their own mounts and the private ones go.
A stopped sandbox's engine mounts the private paths again when it starts: they are
recorded in its PINS label (with each source's device and inode) and pinned again, from
the same sources checked to be the same files, for the length of the start.

Binding needs CAP_SYS_ADMIN: without it (a caller in the docker group, say) sources are
re-checked instead, which narrows the window but cannot close it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import stat
import uuid
from collections.abc import Iterator, Mapping, Sequence

from ._errors import EngineError
from ._labels import PINS
from ._models import Mount, check_mount_sources, source_changed

PINNED_ROOT = "/run/sandboxer/pinned"
# What a PINS label may name: a private path of ours, nothing else on the host.
_PINNED_PATH = re.compile(re.escape(PINNED_ROOT) + r"/([0-9a-f]{32})/([0-9]+)")
_MS_BIND = 0x1000
_MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)


def _open_without_links(path: str) -> int:
    """An O_PATH descriptor for `path` (absolute, real), opened one component at a time
    with O_NOFOLLOW: a symlink anywhere on the way is refused, not followed."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        for name in [part for part in path.split("/") if part]:
            child = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise OSError(f"a symlink stands at {path}")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _bind(fd: int, target: str) -> None:
    if _libc.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, _MS_BIND, None):
        errno = ctypes.get_errno()
        raise EngineError(f"could not pin a mount source at {target}: {os.strerror(errno)}")


def _unbind(target: str) -> None:
    _libc.umount2(target.encode(), _MNT_DETACH)
    with contextlib.suppress(OSError):
        if os.path.isdir(target):
            os.rmdir(target)
        else:
            os.unlink(target)


def _pin(index: int, mount: Mount, place: str, stack: contextlib.ExitStack) -> str:
    target = os.path.join(place, str(index))
    if not _bind_source(mount.source, mount.identity, target, stack):
        raise source_changed(index, mount)
    return target


def _bind_source(
    source: str, identity: tuple[int, int], target: str, stack: contextlib.ExitStack
) -> bool:
    """Bind `source` at `target` until `stack` closes; False if it is no longer the
    file `identity` (device, inode) names, or a symlink stands on its way."""
    try:
        fd = _open_without_links(source)
    except OSError:
        return False
    stack.callback(os.close, fd)
    status = os.fstat(fd)
    if (status.st_dev, status.st_ino) != identity:
        return False
    if stat.S_ISDIR(status.st_mode):
        os.mkdir(target, 0o700)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    stack.callback(_unbind, target)
    _bind(fd, target)
    return True


@contextlib.contextmanager
def pinned_sources(mounts: Sequence[Mount]) -> Iterator[dict[str, str]]:
    """Each mount's source -> the private path the engine is to mount in its place,
    for the block's length. Without the privilege to bind, {} after a re-check."""
    if not mounts:
        yield {}
        return
    if os.geteuid() != 0:
        check_mount_sources(mounts)
        yield {}
        return
    os.makedirs(PINNED_ROOT, mode=0o700, exist_ok=True)
    os.chmod(PINNED_ROOT, 0o700)
    place = os.path.join(PINNED_ROOT, uuid.uuid4().hex)
    os.mkdir(place, 0o700)
    with contextlib.ExitStack() as stack:
        stack.callback(os.rmdir, place)
        yield {mount.source: _pin(index, mount, place, stack) for index, mount in enumerate(mounts)}


def pins_label(mounts: Sequence[Mount], pinned: Mapping[str, str]) -> dict[str, str]:
    """The PINS label for a sandbox created from the `pinned` private paths (none: {})."""
    entries = [[pinned[m.source], m.source, *m.identity] for m in mounts if m.source in pinned]
    return {PINS: json.dumps(entries)} if entries else {}


@contextlib.contextmanager
def pinned_again(labels: Mapping[str, str]) -> Iterator[None]:
    """The private paths a sandbox's PINS label records, pinned again for the block's
    length from the same sources, each checked to be the file it was at create."""
    text = labels.get(PINS)
    if not text:
        yield
        return
    try:
        entries = [(str(p), str(s), (int(d), int(i))) for p, s, d, i in json.loads(text)]
    except (ValueError, TypeError):
        raise EngineError(f"the sandbox's {PINS} label is malformed: {text!r}") from None
    places = set()
    for path, _, _ in entries:
        found = _PINNED_PATH.fullmatch(path)
        if found is None:
            raise EngineError(f"the sandbox's {PINS} label names {path!r}, not a pin of ours")
        places.add(found.group(1))
    if os.geteuid() != 0:
        raise EngineError("this sandbox's mounts were pinned by root: start it as root")
    os.makedirs(PINNED_ROOT, mode=0o700, exist_ok=True)
    with contextlib.ExitStack() as stack:
        for place in places:
            directory = os.path.join(PINNED_ROOT, place)
            try:
                os.mkdir(directory, 0o700)  # exclusive: a start running meanwhile fails
            except FileExistsError:
                raise EngineError(
                    f"{directory} exists: another start of this sandbox is under way (or "
                    "one was killed: unmount what is under it and remove it)"
                ) from None
            stack.callback(os.rmdir, directory)
        for path, source, identity in entries:
            if not _bind_source(source, identity, path, stack):
                raise EngineError(
                    f"the mount source {source} changed since the sandbox was created "
                    "(replaced or redirected): it is not mounted again"
                )
        yield
