"""What `Volume` and `Network` share: the caller's labels checked, the engine named, the
available engines, and the sandboxes that may be using an object."""

from __future__ import annotations

from collections.abc import Mapping

from ._backend import Backend, SandboxInfo
from ._errors import InvalidSpec, SandboxError
from ._gc import inventory
from ._models import RESERVED_LABEL_PREFIX, _string_map
from ._registry import backend_names, get_backend
from ._selector import probe_all


def user_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's labels, none under sandboxer's reserved prefix."""
    checked = _string_map("labels", labels)
    for key in checked:
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise InvalidSpec(
                f"labels[{key!r}]", f"the prefix {RESERVED_LABEL_PREFIX!r} is reserved"
            )
    return dict(checked)


def engine_named(backend: str) -> Backend:
    """The backend called `backend`; InvalidSpec("backend") for any other value."""
    if not isinstance(backend, str) or backend not in backend_names():
        raise InvalidSpec("backend", f"expected one of {backend_names()}, got {backend!r}")
    return get_backend(backend)


def available_engines() -> list[str]:
    return [name for name, state in probe_all(backend_names()).items() if state.available]


def sandboxes_using(backend: str, kind: str) -> list[SandboxInfo]:
    """Our sandboxes on `backend`, any of which may use a `kind` ("volumes", "networks").
    An engine that cannot be listed is an error: not knowing who uses an object is no
    licence to remove it."""
    found = inventory([backend])
    if found.errors:
        raise SandboxError(f"cannot tell which sandboxes use {kind}: {found.errors[backend]}")
    return list(found.sandboxes)
