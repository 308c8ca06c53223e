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

from sandboxer.backend import EngineError, UnsupportedFeature, logger

from ._errors import libvirt_errors
from ._guest_config import Share
from ._sdk import libvirt


def _dac_labels(conn: libvirt.virConnect) -> dict[str, tuple[int, int]]:
    """Whom QEMU runs as, (uid, gid) per domain type: libvirt's DAC labels."""
    with libvirt_errors():
        capabilities = ElementTree.fromstring(conn.getCapabilities())
    labels = {}
    for model in capabilities.iterfind("host/secmodel"):
        if model.findtext("model") != "dac":
            continue
        for label in model.iterfind("baselabel"):
            kind, text = label.get("type"), label.text
            if kind and text:
                uid, _, gid = text.partition(":")
                labels[kind] = (int(uid.lstrip("+")), int(gid.lstrip("+")))
    return labels


def qemu_group(conn: libvirt.virConnect, domain_type: str) -> int | None:
    """The gid QEMU runs as for `domain_type`; None without a DAC label."""
    label = _dac_labels(conn).get(domain_type)
    return label[1] if label else None


def qemu_owner(conn: libvirt.virConnect, domain_type: str) -> tuple[int, int] | None:
    """The (uid, gid) QEMU runs as for `domain_type`; None without a DAC label (root)."""
    return _dac_labels(conn).get(domain_type)


def qemu_users(conn: libvirt.virConnect) -> frozenset[int]:
    """Every uid QEMU may run as (libvirt hands each boot's disk images to it)."""
    return frozenset(uid for uid, _ in _dac_labels(conn).values())


def close_to_others(path: Path, qemu_gid: int | None, mode: int) -> None:
    """`path` for its owner and QEMU's group (`qemu_gid`; None: QEMU runs as root) alone:
    `mode` must give others nothing. Sandbox directories hold the guest's disk and config."""
    if qemu_gid is not None:
        os.chown(path, -1, qemu_gid)
    path.chmod(mode if qemu_gid is not None else mode & 0o700)


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
    close_to_others(directory, qemu_gid, 0o710)  # QEMU's group may pass through
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
