"""The static helper adapters mount read-only at /.sandboxer in sandboxes of OCI images.

An OCI image may hold no shell, no sleep and no init: sandboxer brings its own. The
helper is a directory of two files, a static busybox copied from the host (Debian's
busybox-static) and `init`, a busybox script that is PID 1 of such sandboxes. It is
built once per content (the directory's name is a digest of both files), atomically
(a temporary directory renamed into place under a lock), root-owned and read-only.

How PID 1 is told what to run (`init_argv`, `init_command_line`):
- `/.sandboxer/init`: no main process, the sandbox idles ready for exec;
- `/.sandboxer/init -- ARGV...`: ARGV is the main process;
- `/.sandboxer/init --base64 WORD...`: each WORD is one argument, base64-encoded behind
  a `_` (so that "" is a word too), for engines that split the init's command line on
  runs of spaces, dropping empty words (LXC's `lxc.init.cmd`).
The main process inherits the init's environment, working directory and ids: the
engine sets those (the image config's rules, `sandboxer.images.ImageConfig`).
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import os
import shutil
import stat
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .._errors import EngineError, ImageNotFound
from .rootfs import BUSYBOX_FIX

MOUNT_POINT = "/.sandboxer"
INIT = f"{MOUNT_POINT}/init"
HELPER_DIR_ENV = "SANDBOXER_HELPER_DIR"
DEFAULT_ROOT = "/var/lib/sandboxer/helper"
# Debian's busybox-static; fixed paths, not $PATH: what they hold runs as PID 1.
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
_MAX_BUSYBOX = 16 << 20

# PID 1 of OCI-image sandboxes. Like the built-in images' init (sandboxer.images.rootfs):
# brings up loopback, runs the main process, reaps orphans, stops on SIGTERM or SIGPWR
# (what `incus stop` sends) within a bound. Unlike it, it runs no tool of the image (there
# may be none) and mounts only what the engine left out, never over the image's own /tmp.
_INIT = r"""#!/.sandboxer/busybox sh
# sandboxer init: PID 1 of sandboxes made from OCI images (see sandboxer/images/helper.py).
set -f
bb=/.sandboxer/busybox
[ -e /proc/self ] || $bb mount -t proc proc /proc 2>/dev/null
[ -e /sys/kernel ] || $bb mount -t sysfs sysfs /sys 2>/dev/null
$bb ip link set lo up 2>/dev/null
shutdown() {
    kill -TERM -1 2>/dev/null
    # Up to a second for everything to go, then whatever is left is killed.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 -1 2>/dev/null || exit 0
        $bb sleep 0.1
    done
    kill -KILL -1 2>/dev/null
    exit 0
}
trap shutdown TERM PWR INT
case $1 in
--base64)
    shift
    # `for` walks the words as they were; each pass swaps the first for its decoding.
    for word do
        shift
        # A word is _ then base64; the x keeps trailing newlines, which $(...) would strip.
        case $word in _*) ;; *) false ;; esac &&
            arg=$(printf %s "${word#_}" | $bb base64 -d && echo x) || {
            echo "sandboxer init: a main-process argument is not base64" >&2
            set --
            break
        }
        set -- "$@" "${arg%x}"
    done
    ;;
--) shift ;;
esac
# argv[0] is looked up in $PATH as execvp does: the image's program, never an applet.
find_program() {
    case $1 in */*) program=$1; return 0 ;; esac
    saved_ifs=$IFS
    IFS=:
    for dir in ${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}; do
        if [ -f "${dir:-.}/$1" ] && [ -x "${dir:-.}/$1" ]; then
            program=${dir:-.}/$1
            IFS=$saved_ifs
            return 0
        fi
    done
    IFS=$saved_ifs
    return 1
}
if [ $# -gt 0 ]; then
    if find_program "$1"; then
        name=$1
        shift
        # argv[0] stays as given (as Docker passes it), the path is what was found.
        exec -a "$name" "$program" "$@" &
    else
        echo "sandboxer init: $1: not found in PATH" >&2
    fi
fi
# `wait` returns on every trapped signal and reaps every child, orphans included.
while :; do
    $bb sleep 2147483647 &
    wait
done
"""


def init_argv(main: Sequence[str] | None) -> list[str]:
    """PID 1's argv running `main` (None: the sandbox idles)."""
    return [INIT] if not main else [INIT, "--", *main]


def init_command_line(main: Sequence[str] | None) -> str:
    """The same as one line without spaces inside an argument (LXC's `lxc.init.cmd`)."""
    if not main:
        return INIT
    # The _ keeps an empty argument a word: LXC drops empty ones, moving the rest up.
    words = ["_" + base64.b64encode(arg.encode()).decode() for arg in main]
    return " ".join([INIT, "--base64", *words])


def is_static_elf(data: bytes) -> bool:
    """A 64-bit little-endian ELF executable with no program interpreter."""
    if len(data) < 64 or data[:6] != b"\x7fELF\x02\x01":
        return False
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for index in range(phnum):
        offset = phoff + index * phentsize
        if offset + max(phentsize, 4) > len(data):
            return False
        if struct.unpack_from("<I", data, offset)[0] == 3:  # PT_INTERP: dynamically linked
            return False
    return True


def _static_busybox() -> tuple[bytes, str]:
    """The host's static busybox and the helper's key (a digest of it and the init)."""
    for candidate in BUSYBOX_CANDIDATES:
        try:
            status = os.stat(candidate)
        except OSError:
            continue
        found = _read_static(candidate, status.st_ino, status.st_size, status.st_mtime_ns)
        if found is not None:
            return found
    raise ImageNotFound(
        "OCI images need sandboxer's helper, made from a static busybox (none at "
        f"{' or '.join(BUSYBOX_CANDIDATES)}); fix: {BUSYBOX_FIX}"
    )


@functools.lru_cache(maxsize=2)
def _read_static(path: str, inode: int, size: int, mtime: int) -> tuple[bytes, str] | None:
    """Read once per version of the file (the arguments past `path` key the cache)."""
    try:
        with open(path, "rb") as binary:
            data = binary.read(_MAX_BUSYBOX + 1)
    except OSError:
        return None
    if len(data) > _MAX_BUSYBOX or not is_static_elf(data):
        return None
    return data, hashlib.sha256(data + b"\0" + _INIT.encode()).hexdigest()[:16]


def helper_root() -> Path:
    return Path(os.environ.get(HELPER_DIR_ENV) or DEFAULT_ROOT)


def _trusted(path: Path, kind: int) -> bool:
    """Whether `path` exists, as a `kind` (stat.S_IFDIR, S_IFREG) of this user or root that
    no one else may write to. Its init is PID 1 of every OCI sandbox and Docker bind-mounts
    the directory: one someone else made or may change (or a symlink, to /etc say) is an
    error, never used."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if (
        stat.S_IFMT(info.st_mode) != kind
        or info.st_uid not in (0, os.geteuid())
        or info.st_mode & 0o022
    ):
        raise EngineError(
            f"sandboxer's helper {path} is not a {'directory' if kind == stat.S_IFDIR else 'file'}"
            " of this user or root that only its owner may change: someone else may have "
            f"planted it\n  fix: remove it, or set {HELPER_DIR_ENV} to a directory of yours"
        )
    return True


def _ready(final: Path) -> bool:
    return _trusted(final, stat.S_IFDIR) and all(
        _trusted(final / name, stat.S_IFREG) for name in ("busybox", "init")
    )


def helper_dir() -> Path:
    """The helper directory for this host's busybox and this init, made if missing."""
    busybox, key = _static_busybox()
    root = helper_root()
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    _trusted(root, stat.S_IFDIR)  # else others could plant <key> or swap it later
    final = root / key
    if _ready(final):
        return final
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(final):  # made by another process while we waited
            return final
        temporary = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
        try:
            for name, data in (("busybox", busybox), ("init", _INIT.encode())):
                path = temporary / name
                path.write_bytes(data)
                path.chmod(0o555)
            temporary.chmod(0o755)
            temporary.rename(final)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return final
