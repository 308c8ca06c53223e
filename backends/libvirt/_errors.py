"""Every libvirt error mapped onto sandboxer's error tree, in one place.

libvirt raises one exception class, `libvirtError`; what went wrong is its error code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sandboxer.backend import (
    BackendUnavailable,
    EngineError,
    InvalidSpec,
    SandboxError,
    SandboxExists,
    SandboxNotFound,
    UnsupportedFeature,
)

from ._sdk import libvirt

FIX = "scripts/setup-engines.sh libvirt (installs libvirt and QEMU, starts virtlogd and libvirtd)"
_ACCESS_FIX = "run as root or as a member of the libvirt group, or set SANDBOXER_LIBVIRT_URI"


def _codes(*names: str) -> frozenset[int]:
    # getattr: libvirt-python only has the codes its libvirt version knows.
    return frozenset(
        getattr(libvirt, f"VIR_ERR_{name}") for name in names if hasattr(libvirt, f"VIR_ERR_{name}")
    )


# Each code class and the error it becomes; anything else is an EngineError.
UNREACHABLE = _codes(
    "NO_CONNECT",
    "INVALID_CONN",
    "UNKNOWN_HOST",
    "GNUTLS_ERROR",
    "SSH",
    "LIBSSH",
    "NO_SERVER",
    "NO_CLIENT",
    "AUTH_UNAVAILABLE",
)
# Socket-level failures of the RPC layer mean the daemon went away; other RPC errors
# (e.g. a message over 4 MiB) are ordinary failures of one call.
RPC_LOST = _codes("SYSTEM_ERROR", "INTERNAL_ERROR")
DENIED = _codes("AUTH_FAILED", "AUTH_CANCELLED", "ACCESS_DENIED", "OPERATION_DENIED")
NOT_FOUND = _codes("NO_DOMAIN", "INVALID_DOMAIN")
EXISTS = _codes("DOM_EXIST", "MULTIPLE_DOMAINS")
UNSUPPORTED = _codes(
    "NO_SUPPORT",
    "CONFIG_UNSUPPORTED",
    "OPERATION_UNSUPPORTED",
    "ARGUMENT_UNSUPPORTED",
    "NO_KERNEL",
    "CPU_INCOMPATIBLE",
)
INVALID = _codes("XML_ERROR", "XML_DETAIL", "XML_INVALID_SCHEMA", "INVALID_ARG")


def translate(exc: libvirt.libvirtError) -> SandboxError:
    """The sandboxer error for a libvirt error."""
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code in UNREACHABLE or (code in RPC_LOST and exc.get_error_domain() == libvirt.VIR_FROM_RPC):
        return BackendUnavailable("libvirt", message, FIX)
    if code in DENIED:
        return BackendUnavailable("libvirt", message, _ACCESS_FIX)
    if code in NOT_FOUND:
        return SandboxNotFound(message)
    if code in EXISTS or (code == libvirt.VIR_ERR_OPERATION_FAILED and "already exists" in message):
        return SandboxExists(message)
    if code in UNSUPPORTED:
        return UnsupportedFeature(message)
    if code in INVALID:
        return InvalidSpec("libvirt", message)
    return EngineError(message)


@contextlib.contextmanager
def libvirt_errors() -> Iterator[None]:
    """Re-raise any libvirt error as its sandboxer error."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise translate(exc) from exc
