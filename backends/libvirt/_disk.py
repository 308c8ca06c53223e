"""A user's disk image, made ready for one sandbox: a copy-on-write overlay and a seed.

The user's image is only ever read: the guest writes to a qcow2 overlay in the sandbox's
directory, which `remove()` deletes with everything else there. The NoCloud seed is a
small ISO 9660 volume labelled "cidata", attached as a second, read-only virtio disk.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import attrs

from sandboxer.backend import BackendUnavailable, EngineError, ImageNotFound, InvalidSpec

QCOW2_MAGIC = b"QFI\xfb"
SEED_LABEL = "cidata"
INFO_SECONDS = 30
INSTALL = "apt-get install qemu-utils genisoimage"


@attrs.frozen
class UserDisk:
    path: Path
    format: str  # "qcow2" | "raw"


def user_disk(image: str, qemu_users: frozenset[int] = frozenset()) -> UserDisk:
    """The disk image at `image`; ImageNotFound (missing, unreadable) or InvalidSpec (it
    reaches other host files, or others could swap it) says why it cannot be used. The
    image may belong to `qemu_users`: libvirt gives a boot's backing image to QEMU's user
    and never gives it back."""
    # Resolved once: the checks and the overlay's backing reference name the same file.
    path = Path(os.path.realpath(image))
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(QCOW2_MAGIC))
    except FileNotFoundError:
        raise ImageNotFound(f"no disk image at {image}") from None
    except IsADirectoryError:
        raise ImageNotFound(f"{image} is a directory, not a disk image") from None
    except OSError as exc:
        raise ImageNotFound(f"cannot read the disk image {image}: {exc.strerror}") from exc
    _refuse_writable_by_others(path, qemu_users)
    disk = UserDisk(path, "qcow2" if head == QCOW2_MAGIC else "raw")
    if disk.format == "qcow2":
        _refuse_references(disk)
    return disk


def _refuse_writable_by_others(path: Path, qemu_users: frozenset[int]) -> None:
    """InvalidSpec unless only root and the caller (and, for the image itself, QEMU's
    user) can change `path` and the directories above it: anyone else could swap the
    image between our checks and QEMU opening it. A sticky directory (/tmp) is fine."""
    trusted = {0, os.geteuid()}
    for part in (path, *path.parents):
        info = part.stat()
        mode = info.st_mode
        owners = trusted | qemu_users if part == path else trusted
        shared = bool(mode & stat.S_IWOTH or (mode & stat.S_IWGRP and info.st_gid != 0))
        # Sticky: others cannot replace what lies below, whose owner passed already.
        sticky_directory = part != path and bool(mode & stat.S_ISVTX)
        if info.st_uid not in owners or (shared and not sticky_directory):
            raise InvalidSpec(
                "image",
                f"{part} can be changed by users other than root and you, who could swap "
                f"the disk image after its check; keep {path} where only you can write",
            )


def _refuse_references(disk: UserDisk) -> None:
    """InvalidSpec unless the qcow2 stands alone: a backing file or an external data file
    names another host file, which QEMU would open for the guest (say /etc/shadow)."""
    fix = f"fix: qemu-img convert -O qcow2 {disk.path} STANDALONE.qcow2 and boot that"
    argv = ["qemu-img", "info", "-f", "qcow2", "--output=json", "--backing-chain"]
    try:
        done = subprocess.run(
            [*argv, str(disk.path)], capture_output=True, text=True, timeout=INFO_SECONDS
        )
    except FileNotFoundError as exc:
        raise BackendUnavailable("libvirt", "reading a qcow2 needs qemu-img", INSTALL) from exc
    except subprocess.TimeoutExpired:
        # A backing file that is a FIFO or a hung mount: refused like any other.
        raise InvalidSpec("image", f"qemu-img info {disk.path} did not finish; {fix}") from None
    if done.returncode != 0:
        reason = done.stderr.strip()
        raise InvalidSpec("image", f"qemu-img cannot read {disk.path} ({reason}); {fix}")
    top = json.loads(done.stdout)[0]
    backing = top.get("full-backing-filename") or top.get("backing-filename")
    data_file = top.get("format-specific", {}).get("data", {}).get("data-file")
    for what, other in (("a backing file", backing), ("an external data file", data_file)):
        if other:
            refused = f"{disk.path} has {what} ({other}): VMs boot self-contained images"
            raise InvalidSpec("image", f"{refused} only; {fix}")


def _run(argv: list[str], what: str) -> None:
    try:
        subprocess.run(argv, capture_output=True, text=True, check=True)
    except FileNotFoundError as exc:
        raise BackendUnavailable(
            "libvirt",
            f"{what} needs {argv[0]}, which is missing",
            INSTALL,
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise EngineError(f"{what} failed: {exc.stderr.strip()}") from exc


def create_overlay(disk: UserDisk, overlay: Path) -> None:
    """A qcow2 file at `overlay` that reads from `disk` and keeps the guest's writes."""
    _run(
        [
            "qemu-img", "create", "-q", "-f", "qcow2",
            "-b", str(disk.path.resolve()), "-F", disk.format, str(overlay),
        ],
        "creating the overlay disk",
    )  # fmt: skip


def create_seed(files: dict[str, bytes], seed: Path) -> None:
    """The NoCloud seed volume holding `files` (name -> content) at `seed`."""
    with tempfile.TemporaryDirectory(prefix="seed-", dir=seed.parent) as scratch:
        for name, content in files.items():
            (Path(scratch) / name).write_bytes(content)
        _run(
            [
                "genisoimage", "-quiet", "-output", str(seed), "-volid", SEED_LABEL,
                "-joliet", "-rock", *(str(Path(scratch) / name) for name in files),
            ],
            "writing the cloud-init seed",
        )  # fmt: skip
