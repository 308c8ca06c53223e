"""Getting a `Sandbox` back for a sandbox another process launched, and keeping ours alive.

An attached sandbox knows what its engine reports (backend, id, name, labels), not the
spec it was launched from: its `spec` is a placeholder and its `enforcement` is empty.
Destroying it removes it on the engine; this process never destroys it by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._backend import Handle, LaunchPlan, SandboxInfo
from ._errors import InvalidSpec, SandboxNotFound
from ._gc import Inventory, inventory
from ._labels import EXEC_USER
from ._launch import _live, _live_lock
from ._models import SandboxSpec
from ._registry import get_backend
from ._sandbox import Sandbox

# Ids are hex digests: a shorter prefix would match by accident too easily.
_MIN_ID_PREFIX = 4


def match(found: Inventory, name_or_id: str) -> SandboxInfo:
    """The sandbox in `found` called `name_or_id`, or whose id is or starts with it."""
    by_name = [info for info in found.sandboxes if info.name == name_or_id]
    if len(by_name) == 1:
        return by_name[0]
    matches = by_name or [
        info
        for info in found.sandboxes
        if info.id == name_or_id
        or (len(name_or_id) >= _MIN_ID_PREFIX and info.id.startswith(name_or_id))
    ]
    if len(matches) > 1:
        listed = ", ".join(f"{info.backend}/{info.name}" for info in matches)
        raise InvalidSpec("sandbox", f"{name_or_id!r} is ambiguous: it matches {listed}")
    if not matches:
        unlisted = "".join(
            f"; {name} could not be listed: {why}" for name, why in found.errors.items()
        )
        raise SandboxNotFound(
            f"no sandbox of ours is called or has the id {name_or_id!r}{unlisted}"
        )
    return matches[0]


def find(name_or_id: str, backends: Sequence[str] | None = None) -> SandboxInfo:
    """Our sandbox called `name_or_id` (or with that id or id prefix) on any engine."""
    return match(inventory(backends), name_or_id)


def attach(name_or_id: str | SandboxInfo, backends: Sequence[str] | None = None) -> Sandbox:
    """A `Sandbox` for an existing sandbox of ours, found by name, id or id prefix."""
    info = name_or_id if isinstance(name_or_id, SandboxInfo) else find(name_or_id, backends)
    plan = LaunchPlan(
        spec=SandboxSpec(backend=info.backend, profile="default"),
        name=info.name,
        labels=info.labels,
        network="unknown",
        ports=(),
        user=info.labels.get(EXEC_USER),  # the user it was launched to run commands as
        cpus=None,
        memory=None,
        pids=None,
    )
    # A private list: this process did not launch it, so its exit must not destroy it.
    return Sandbox(get_backend(info.backend), Handle(info.id, info.name), plan, {}, [])


def detach(sandbox: Sandbox) -> None:
    """Let `sandbox` outlive this process: it is no longer destroyed at interpreter exit."""
    with _live_lock:
        if sandbox in _live:
            _live.remove(sandbox)
