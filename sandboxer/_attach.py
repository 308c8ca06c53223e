"""Getting a `Sandbox` back for a sandbox another process launched, and keeping ours alive.

An attached sandbox knows what its engine reports (backend, id, name, labels), not the
spec it was launched from: its `spec` is a placeholder and its `enforcement` is empty.
Destroying it removes it on the engine; this process never destroys it by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._backend import Handle, LaunchPlan, SandboxInfo
from ._gc import inventory
from ._labels import EXEC_USER
from ._launch import _live
from ._models import SandboxSpec
from ._registry import get_backend
from ._sandbox import Sandbox


def attach(name_or_id: str | SandboxInfo, backends: Sequence[str] | None = None) -> Sandbox:
    """A `Sandbox` for an existing sandbox of ours, found by name, id or id prefix."""
    if isinstance(name_or_id, SandboxInfo):
        info = name_or_id
    else:
        info = inventory(backends).find(name_or_id)
    spec = SandboxSpec(backend=info.backend, profile="default")
    plan = LaunchPlan(
        name=info.name,
        labels=info.labels,
        image=spec.image,
        network=spec.effective_network,  # a placeholder, as the spec is
        user=info.labels.get(EXEC_USER),  # the user it was launched to run commands as
    )
    # Not live here: this process did not launch it, so its exit must not destroy it.
    handle = Handle(info.id, info.name)
    return Sandbox(get_backend(info.backend), handle, spec, plan, {}, None)


def detach(sandbox: Sandbox) -> None:
    """Let `sandbox` outlive this process: it is no longer destroyed at interpreter exit."""
    _live.discard(sandbox)
