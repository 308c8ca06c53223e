"""Host side of the 9p shares: give QEMU a path it can reach, and take it away again.

QEMU runs as an unprivileged user (libvirt-qemu), so a source under a private parent
(e.g. /tmp/pytest-of-root, mode 0700) is out of its reach even when the directory itself
is open. When we are root, each source is bind-mounted under the sandbox's own directory
(nosuid,nodev, and read-only at the host level too for read-only mounts) and QEMU opens
that path instead. Those bind mounts sit in a directory only root and QEMU's group can
enter: other local users must not reach a source through it that its private parent hid.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import attrs

from sandboxer._errors import EngineError, UnsupportedFeature
from sandboxer._log import logger

from ._errors import libvirt_errors
from ._guest_config import Share
from ._sdk import libvirt


def qemu_group(conn: libvirt.virConnect, domain_type: str) -> int | None:
    """The gid QEMU runs as (libvirt's DAC label for `domain_type`); None without one."""
    with libvirt_errors():
        capabilities = ElementTree.fromstring(conn.getCapabilities())
    for model in capabilities.iterfind("host/secmodel"):
        if model.findtext("model") != "dac":
            continue
        for label in model.iterfind("baselabel"):
            if label.get("type") == domain_type and label.text:
                return int(label.text.rpartition(":")[2].lstrip("+"))
    return None


def _mount(*args: str) -> None:
    try:
        subprocess.run(["mount", *args], capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as exc:
        raise EngineError(f"mount {' '.join(args)} failed: {exc.stderr.strip()}") from exc


def expose(shares: tuple[Share, ...], directory: Path, qemu_gid: int | None) -> tuple[Share, ...]:
    """The shares with sources QEMU (group `qemu_gid`, None: root) can open; bind mounts
    land in `directory`."""
    for share in shares:
        if not os.path.isdir(share.source):
            raise UnsupportedFeature(f"VM mounts share directories; {share.source} is not one")
    if os.geteuid() != 0 or not shares:
        return shares  # nothing to bind, or no root to bind with: QEMU must reach them
    directory.mkdir(mode=0o700)
    if qemu_gid is not None:
        os.chown(directory, 0, qemu_gid)
        directory.chmod(0o710)  # QEMU's group may pass through, and no one else
    exposed = []
    for share in shares:
        point = directory / share.tag
        point.mkdir()
        _mount("--bind", share.source, str(point))
        _mount("-o", "remount,bind,nosuid,nodev" + (",ro" if share.read_only else ""), str(point))
        exposed.append(attrs.evolve(share, source=str(point)))
    return tuple(exposed)


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`, deepest first."""
    prefix = str(directory).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as table:
        for line in table:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix) or point == str(directory):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def release(directory: Path) -> None:
    """Unmount every share under `directory`; raise if one stays (its files are the user's)."""
    for point in mounts_under(directory):
        result = subprocess.run(["umount", point], capture_output=True, text=True)
        if result.returncode != 0:
            logger.warning("umount %s failed (%s); detaching it", point, result.stderr.strip())
            subprocess.run(["umount", "-l", point], capture_output=True)
    left = mounts_under(directory)
    if left:
        raise EngineError(f"could not unmount {', '.join(left)}; not deleting {directory}")
