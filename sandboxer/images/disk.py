"""Disk images: a user's own bootable VM disk, named by its absolute path on the host."""

from __future__ import annotations

import posixpath

DISK_IMAGE_SUFFIXES = (".qcow2", ".img", ".raw")


def looks_like_disk_image(image: str) -> bool:
    """True for names that can only mean a disk file (``debian.qcow2``, ``/srv/vm.img``)."""
    return image.endswith(DISK_IMAGE_SUFFIXES)


def is_disk_image(image: str) -> bool:
    """True for an absolute path to a qcow2 or raw disk image (VMs boot those)."""
    return looks_like_disk_image(image) and posixpath.isabs(image)
