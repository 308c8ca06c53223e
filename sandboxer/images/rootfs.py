"""The busybox root file system behind the built-in images, as a tar stream.

Every backend starts from the same tree: Docker imports it, Incus imports it with
metadata, the VM image packs it into an initramfs. Built from Debian's busybox-static.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import time

from .._errors import ImageNotFound

# Bump when the tree changes, so engines holding an older build get a new one.
IMAGE_VERSION = "3"
BUILTIN_IMAGES = ("sandboxer/minimal", "sandboxer/system")
BUSYBOX_FIX = "apt-get install -y busybox-static"
_DIRECTORIES = (
    "/bin", "/sbin", "/usr", "/usr/bin", "/usr/sbin", "/etc", "/etc/sandboxer",
    "/etc/sandboxer/services", "/proc", "/sys", "/dev", "/run", "/var", "/root", "/home", "/mnt",
)  # fmt: skip
_STICKY_DIRECTORIES = ("/tmp", "/var/tmp")
# Every directory the built-in images hold (adapters need not create mount points there).
ROOTFS_DIRECTORIES = frozenset((*_DIRECTORIES, *_STICKY_DIRECTORIES, "/home/sandbox"))

# The built-in accounts: adapters resolve a user name against them before the sandbox runs.
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nsandbox:x:1000:\nnogroup:x:65534:\n"

# PID 1 of system sandboxes: brings up loopback, starts services, reaps orphans, and
# shuts down on SIGTERM or SIGPWR (what `incus stop` sends) within a bound.
_INIT = r"""#!/bin/sh
# sandboxer init: a minimal PID 1 for system sandboxes.
mount -t proc proc /proc 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /tmp 2>/dev/null
mount -t tmpfs -o mode=755 tmpfs /run 2>/dev/null
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up 2>/dev/null
shutdown() {
    kill -TERM -1 2>/dev/null
    sleep 1
    kill -KILL -1 2>/dev/null
    exit 0
}
trap shutdown TERM PWR INT
for service in /etc/sandboxer/services/*; do
    [ -x "$service" ] && "$service" &
done
# `wait` returns on every signal and every reaped child; the loop keeps PID 1 alive.
while :; do
    sleep 2147483647 &
    wait
done
"""


def _busybox() -> str:
    path = shutil.which("busybox") or "/bin/busybox"
    try:
        applets = subprocess.run([path, "--list-full"], capture_output=True, check=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageNotFound(
            f"the built-in images need a static busybox; fix: {BUSYBOX_FIX}"
        ) from exc
    return applets.stdout


def _add(
    tar: tarfile.TarFile,
    name: str,
    *,
    kind: bytes = tarfile.REGTYPE,
    mode: int = 0o755,
    data: bytes = b"",
    link: str = "",
    uid: int = 0,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = uid
    info.mtime = int(time.time())
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def build_rootfs_tar(prefix: str = "", compress: bool = False) -> bytes:
    """The root file system as a tar (members under `prefix`, e.g. "rootfs/" for Incus)."""
    applets = _busybox()
    busybox_path = shutil.which("busybox") or "/bin/busybox"
    with open(busybox_path, "rb") as binary:
        busybox = binary.read()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:

        def add(name: str, **kwargs: object) -> None:
            _add(tar, prefix + name, **kwargs)  # type: ignore[arg-type]

        for directory in _DIRECTORIES:
            add(directory.lstrip("/"), kind=tarfile.DIRTYPE)
        for directory in _STICKY_DIRECTORIES:
            add(directory.lstrip("/"), kind=tarfile.DIRTYPE, mode=0o1777)
        add("home/sandbox", kind=tarfile.DIRTYPE, uid=1000)
        add("bin/busybox", data=busybox)
        for applet in sorted(set(applets.split())):
            applet = applet.lstrip("/")
            if applet not in ("bin/busybox", "sbin/init"):
                add(applet, kind=tarfile.SYMTYPE, link="/bin/busybox")
        add("etc/passwd", mode=0o644, data=PASSWD.encode())
        add("etc/group", mode=0o644, data=GROUP.encode())
        add("etc/hostname", mode=0o644, data=b"sandbox\n")
        add("etc/hosts", mode=0o644, data=b"127.0.0.1 localhost sandbox\n::1 localhost\n")
        add(
            "etc/os-release",
            mode=0o644,
            data=f'NAME="sandboxer minimal"\nID=sandboxer\nVERSION_ID="{IMAGE_VERSION}"\n'.encode(),
        )
        add("sbin/init", kind=tarfile.REGTYPE, data=_INIT.encode())
    return buffer.getvalue()


def is_builtin(image: str) -> bool:
    return image in BUILTIN_IMAGES
