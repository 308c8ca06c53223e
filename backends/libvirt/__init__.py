"""libvirt/QEMU backend: virtual machines with their own kernel, through libvirt-python.

`LibvirtBackend` loads on first use, so the pure modules here (domain XML, guest
configuration, initramfs writer) import without libvirt-python installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import LibvirtBackend

__all__ = ["LibvirtBackend"]


def __getattr__(name: str) -> Any:
    if name == "LibvirtBackend":
        from ._backend import LibvirtBackend

        return LibvirtBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
