"""Built-in images, built locally from Debian packages (no registry is needed)."""

from .disk import DISK_IMAGE_SUFFIXES, is_disk_image, looks_like_disk_image
from .rootfs import BUILTIN_IMAGES, GROUP, IMAGE_VERSION, PASSWD, build_rootfs_tar, is_builtin

__all__ = [
    "BUILTIN_IMAGES",
    "DISK_IMAGE_SUFFIXES",
    "GROUP",
    "IMAGE_VERSION",
    "PASSWD",
    "build_rootfs_tar",
    "is_builtin",
    "is_disk_image",
    "looks_like_disk_image",
]
