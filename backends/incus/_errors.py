"""Every pylxd (and transport) exception mapped onto sandboxer's error tree, in one place."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

from sandboxer.backend import (
    BackendUnavailable,
    EngineError,
    SandboxError,
    SandboxExists,
    SandboxNotFound,
)

from ._sdk import pylxd, requests

_lxd = pylxd.exceptions
FIX = "start incusd (scripts/setup-engines.sh incus) or set SANDBOXER_INCUS_ENDPOINT"
# Most specific first: the first class the exception is an instance of decides.
MAPPING: tuple[tuple[type[BaseException], type[SandboxError]], ...] = (
    (_lxd.NotFound, SandboxNotFound),
    (_lxd.Conflict, EngineError),
    (_lxd.LXDAPIException, EngineError),
    (_lxd.LXDAPIExtensionNotAvailable, BackendUnavailable),
    (_lxd.ClientConnectionFailed, BackendUnavailable),
    (requests.exceptions.ConnectionError, BackendUnavailable),
    (requests.exceptions.Timeout, BackendUnavailable),
    (requests.exceptions.RequestException, EngineError),
    (ssl.SSLError, BackendUnavailable),
    (ConnectionError, BackendUnavailable),
)
# How Incus words "an instance of that name exists" (a conflict, or its database's).
_EXISTS = ("UNIQUE constraint failed: instances.", "Instance already exists")
# What `incus_errors()` catches: every source in MAPPING.
CAUGHT = tuple(source for source, _ in MAPPING)


def translate(exc: BaseException) -> SandboxError:
    """The sandboxer error for a pylxd, requests or socket exception."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, _lxd.LXDAPIException) and any(sign in text for sign in _EXISTS):
        return SandboxExists(text)
    for source, target in MAPPING:
        if isinstance(exc, source):
            if target is BackendUnavailable:
                return BackendUnavailable("incus", text, FIX)
            return target(text)
    return EngineError(f"{type(exc).__name__}: {text}")


@contextlib.contextmanager
def incus_errors() -> Iterator[None]:
    """Re-raise any pylxd, requests or socket exception as its sandboxer error."""
    try:
        yield
    except CAUGHT as exc:
        raise translate(exc) from exc
