"""Images: the built-in ones, built locally (no registry is needed), and any OCI image
through the store (pulled, unpacked safely, cached by digest).

A public package: adapters build `sandboxer/minimal` and `sandboxer/system` for their
engine from here (`is_builtin`, `build_rootfs_tar`), and boot users' own disk images
(`is_disk_image`).
"""

from .config import ImageConfig
from .disk import DISK_IMAGE_SUFFIXES, is_disk_image, looks_like_disk_image
from .reference import ImageReference, parse_reference
from .rootfs import (
    BUILTIN_IMAGES,
    BUSYBOX_FIX,
    GROUP,
    IMAGE_VERSION,
    PASSWD,
    ROOTFS_DIRECTORIES,
    build_rootfs_tar,
    is_builtin,
)
from .store import PULL_POLICIES, ImageStore, LocalImage, Progress, StoredImage, default_store

__all__ = [
    "BUILTIN_IMAGES",
    "BUSYBOX_FIX",
    "DISK_IMAGE_SUFFIXES",
    "GROUP",
    "IMAGE_VERSION",
    "PASSWD",
    "PULL_POLICIES",
    "ROOTFS_DIRECTORIES",
    "ImageConfig",
    "ImageReference",
    "ImageStore",
    "LocalImage",
    "Progress",
    "StoredImage",
    "build_rootfs_tar",
    "default_store",
    "is_builtin",
    "is_disk_image",
    "looks_like_disk_image",
    "parse_reference",
]
