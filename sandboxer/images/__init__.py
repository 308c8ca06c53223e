"""Built-in images, built locally from Debian packages (no registry is needed)."""

from .rootfs import BUILTIN_IMAGES, IMAGE_VERSION, build_rootfs_tar, is_builtin

__all__ = ["BUILTIN_IMAGES", "IMAGE_VERSION", "build_rootfs_tar", "is_builtin"]
