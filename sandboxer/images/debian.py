"""The built-in Debian images `sandboxer/debian` and `sandboxer/systemd`, built here.

Both are Debian 12 (bookworm) built with mmdebstrap from the Debian archive this host's
apt uses (nothing else on the network, no registry), written as an OCI image layout
that the image store unpacks for every engine:

- `sandboxer/debian`: a slim userland with `python3` (the packages of Docker's
  `debian:bookworm-slim`, docs and man pages left out). No Entrypoint and no Cmd: a
  sandbox of it idles, ready for exec.
- `sandboxer/systemd`: the same with systemd as PID 1 (`/sbin/init`), for Incus system
  containers and libvirt VMs (`Requirements(init=True)`).

Both have the `sandbox` account (uid and gid 1000, home /home/sandbox) that the
profiles' default user names. `recipe_key(name)` changes whenever anything that goes into
an image changes, so the store knows when to rebuild.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .._errors import ImageNotFound, ImagePullFailed
from ._apt_sources import debian_mirrors
from ._layout import Layer, add_image, canonical_json, init_layout, write_gzip_layer

if TYPE_CHECKING:
    from .store import Progress

BUILTIN_OCI_IMAGES = ("sandboxer/debian", "sandboxer/systemd")
MMDEBSTRAP_FIX = "apt-get install -y mmdebstrap"
# Bump when the build changes in a way the options below do not show (how the layer is
# rewritten, the config's shape), so that stores rebuild.
FORMAT_VERSION = "2"
SUITE = "bookworm"
# Every file time is clamped to this (Debian 12.0's release day) through
# SOURCE_DATE_EPOCH: the same packages give the same layer digest, and Python
# byte-compiles with source hashes (valid whatever the files' times) instead of times.
EPOCH = 1686355200
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUILD_TIMEOUT = 1800.0  # seconds; a first build takes about a minute
_STOP_GRACE = 60.0  # mmdebstrap unmounts and removes its chroot on SIGTERM
_PROGRESS_STEP = 16 * 1024 * 1024  # bytes of the tarball between progress reports
_CAPABILITIES = "SCHILY.xattr.security.capability"  # the PAX record of file capabilities

# What Docker's debian:*-slim images leave out; the copyright files stay.
_SLIM = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/lintian/overrides/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/man/*",
)
# Customize hooks run with the chroot as "$1".
_COMMON_HOOKS = (
    'chroot "$1" groupadd --gid 1000 sandbox',
    # --no-log-init: no sparse lastlog/faillog records sized by the uid.
    'chroot "$1" useradd --no-log-init --uid 1000 --gid 1000 --create-home'
    " --home-dir /home/sandbox --shell /bin/bash sandbox",
    # mmdebstrap copies the host's hostname and resolv.conf: neither belongs in an image.
    'printf "sandbox\\n" > "$1/etc/hostname"',
    'printf "127.0.0.1 localhost sandbox\\n::1 localhost\\n" > "$1/etc/hosts"',
    'rm -f "$1/etc/resolv.conf" && install -m 644 /dev/null "$1/etc/resolv.conf"',
)
# systemd boots to multi-user.target (no display manager). Masked: the apt timers, which
# would fetch from the Debian archive on their own (a sandbox sends nothing off the host
# unless its user does). Not masked, because their own conditions already skip them
# where they cannot work: udev (read-only /sys in a container), getty@tty1 (no
# /dev/tty0 in a container; a VM's console login is harmless and needs a password),
# systemd-networkd-wait-online (networkd is not enabled; the engines configure the NIC).
_SYSTEMD_HOOKS = (
    'ln -sf /lib/systemd/system/multi-user.target "$1/etc/systemd/system/default.target"',
    'ln -sf /dev/null "$1/etc/systemd/system/apt-daily.timer"',
    'ln -sf /dev/null "$1/etc/systemd/system/apt-daily-upgrade.timer"',
)


@attrs.frozen
class _Recipe:
    packages: tuple[str, ...]  # beyond the minbase variant (what debootstrap installs)
    hooks: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    stop_signal: str = ""


_RECIPES = {
    "sandboxer/debian": _Recipe(packages=("python3",)),
    "sandboxer/systemd": _Recipe(
        # systemd-sysv: /sbin/init is systemd. dbus: logind, hostnamectl and friends.
        # iproute2 and procps: `ip`, `ps` and `kill`, which a whole system is expected to have.
        packages=("python3", "systemd", "systemd-sysv", "dbus", "iproute2", "procps"),
        hooks=_SYSTEMD_HOOKS,
        cmd=("/sbin/init",),
        stop_signal="SIGRTMIN+3",  # systemd's clean shutdown
    ),
}


def recipe_key(name: str) -> str:
    """A hash of everything that goes into the image `name` (hex sha256)."""
    recipe = _recipe(name)
    document = {
        "format": FORMAT_VERSION,
        "suite": SUITE,
        "epoch": EPOCH,
        "mmdebstrap": _options(recipe),
        "config": _process_config(recipe),
    }
    return hashlib.sha256(canonical_json(document)).hexdigest()


def build_layout(name: str, layout: Path, tag: str, progress: Progress | None = None) -> None:
    """Build the image `name` into the OCI layout `layout`, as `tag` (other tags stay)."""
    recipe = _recipe(name)
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ImageNotFound(f"building {name} needs mmdebstrap; fix: {MMDEBSTRAP_FIX}")
    init_layout(layout)
    scratch = Path(tempfile.mkdtemp(dir=layout, prefix=".build-"))
    try:
        tarball = scratch / "rootfs.tar"
        # No mirror found: mmdebstrap's default (deb.debian.org with updates and security).
        mirrors = debian_mirrors(SUITE)
        argv = [mmdebstrap, *_options(recipe), SUITE, str(tarball), *mirrors]
        _debootstrap(name, argv, progress)
        layer = _pack_layer(tarball, layout, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    add_image(layout, tag, _image_config(name, recipe), [layer])


def _recipe(name: str) -> _Recipe:
    try:
        return _RECIPES[name]
    except KeyError:
        raise ValueError(
            f"{name!r} is not a built-in Debian image ({', '.join(BUILTIN_OCI_IMAGES)})"
        ) from None


def _options(recipe: _Recipe) -> list[str]:
    return [
        "--variant=minbase",
        f"--include={','.join(recipe.packages)}",
        # Merged /usr the way debootstrap makes it, without the usrmerge package (and the
        # full perl it pulls in).
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        '--aptopt=Acquire::Languages "none"',
        *(f"--dpkgopt={option}" for option in _SLIM),
        *(f"--customize-hook={hook}" for hook in (*_COMMON_HOOKS, *recipe.hooks)),
    ]


def _process_config(recipe: _Recipe) -> dict[str, Any]:
    config: dict[str, Any] = {"Env": [f"PATH={PATH}"]}
    if recipe.cmd:
        config["Cmd"] = list(recipe.cmd)
    if recipe.stop_signal:
        config["StopSignal"] = recipe.stop_signal
    return config


def _image_config(name: str, recipe: _Recipe) -> dict[str, Any]:
    """The image config, without `rootfs` (the layout writer adds it)."""
    created = datetime.datetime.fromtimestamp(EPOCH, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = recipe_key(name)
    labels = {"sandboxer.image": name, "sandboxer.recipe": key}
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {**_process_config(recipe), "Labels": labels},
        "history": [{"created": created, "created_by": f"sandboxer: mmdebstrap {SUITE} {key}"}],
    }


def _debootstrap(name: str, argv: list[str], progress: Progress | None) -> None:
    """Run mmdebstrap, reporting its steps; ImagePullFailed with its last words if it fails."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH), "LC_ALL": "C.UTF-8"}
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        errors="replace",
    )
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        _stop(process)

    timer = threading.Timer(BUILD_TIMEOUT, expire)
    timer.start()
    last: deque[str] = deque(maxlen=15)
    try:
        assert process.stderr is not None
        steps = 0
        for line in process.stderr:
            last.append(line.rstrip())
            # Its main steps ("I: downloading packages with apt...") make the phases.
            if progress is not None and line.startswith("I: ") and line.rstrip().endswith("..."):
                steps += 1
                step = line[3:].strip().split(" /")[0].rstrip(". ")
                progress(f"building {name}: {step}", steps, None)
        returncode = process.wait()
    finally:
        timer.cancel()
        if process.poll() is None:
            _stop(process)
    if returncode != 0:
        why = (
            f"timed out after {BUILD_TIMEOUT:.0f} s"
            if timed_out.is_set()
            else f"exit status {returncode}"
        )
        raise ImagePullFailed(
            f"building {name} with mmdebstrap failed ({why}):\n"
            + "\n".join(last)
            + "\nfix: make sure the host reaches its Debian archive (apt-get update works)"
        )


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(_STOP_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _pack_layer(tarball: Path, layout: Path, progress: Progress | None) -> Layer:
    total = tarball.stat().st_size
    with tarball.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|") as source:

        def fill(layer: tarfile.TarFile) -> None:
            reported = 0
            for member in source:
                if _rewrite(member):
                    data = source.extractfile(member) if member.isreg() else None
                    layer.addfile(member, data)
                if progress is not None and raw.tell() - reported >= _PROGRESS_STEP:
                    reported = raw.tell()
                    progress("compressing the layer", reported, total)

        layer = write_gzip_layer(layout, fill)
    if progress is not None:
        progress("compressing the layer", total, total)
    return layer


def _rewrite(member: tarfile.TarInfo) -> bool:
    """Make a member of mmdebstrap's tarball a layer member; False: leave it out.

    Names lose their "./"; /dev stays empty (device nodes are the engine's business, and
    an unpacker need not create any); owners are numeric only (a name would be mapped
    through the unpacking host's accounts); times are clamped. Of the PAX records only
    file capabilities are kept: the rest is in the member itself, and POSIX ACLs (on
    /var/log/journal) name group ids that an unprivileged unpacker cannot map, while
    systemd-tmpfiles sets them again at boot.
    """
    name = member.name.removeprefix("./")
    if name in ("", ".") or name.startswith("dev/"):
        return False
    member.name = name
    if member.islnk():
        member.linkname = member.linkname.removeprefix("./")
    member.uname = member.gname = ""
    member.mtime = min(int(member.mtime), EPOCH)
    member.pax_headers = {
        key: value for key, value in member.pax_headers.items() if key == _CAPABILITIES
    }
    return True
