"""libvirt-python, or BackendUnavailable with the install hint when it is missing."""

from sandboxer.backend import BackendUnavailable

try:
    import libvirt
    import libvirt_qemu
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise BackendUnavailable(
        "libvirt",
        f"libvirt-python is not installed ({exc})",
        "apt-get install libvirt-dev pkg-config && pip install 'libvirt-python>=9.0'",
    ) from exc

__all__ = ["libvirt", "libvirt_qemu"]
