"""`launch`: spec -> selection -> plan -> engine, with cleanup whatever goes wrong."""

from __future__ import annotations

import atexit
import contextlib
from typing import Any

import attrs

from ._backend import Backend, LaunchPlan
from ._errors import UnsupportedFeature
from ._labels import EXPIRES, LAUNCH
from ._live import LiveSandboxes
from ._log import logger, timed
from ._models import SandboxSpec
from ._networks import check_networks
from ._pinned import pinned_sources, pins_label
from ._plan import make_plan as make_plan  # where tests and the CLI find it
from ._reaper import start_reaper
from ._registry import get_backend
from ._sandbox import Sandbox
from ._selector import select
from ._volumes import ensure_volumes

# Sandboxes this process launched and has not destroyed; removed at interpreter exit.
_live = LiveSandboxes()
atexit.register(_live.destroy_all)


def _create(backend: Backend, plan: LaunchPlan) -> Any:
    try:
        with timed("create", backend=backend.name, sandbox=plan.name):
            return backend.create(plan)
    except BaseException:
        # Start failed halfway (or we were interrupted, or the name is someone else's):
        # leave nothing of this launch behind. Removal goes by the launch's own id, so
        # whatever else holds the name is never touched.
        with contextlib.suppress(Exception):
            backend.remove(plan.name, plan.labels[LAUNCH])
        raise


def _start_reaper(backend: Backend, plan: LaunchPlan) -> None:
    """The process that removes the sandbox when its max_lifetime ends (see _reaper)."""
    expires = plan.labels.get(EXPIRES)
    if expires is None:
        return
    try:
        start_reaper(backend.name, plan.name, plan.labels[LAUNCH], float(expires))
    except BaseException:
        with contextlib.suppress(Exception):  # a lifetime nothing holds: not launched
            backend.remove(plan.name, plan.labels[LAUNCH])
        raise


def launch(spec: SandboxSpec | None = None, /, **fields: Any) -> Sandbox:
    """Start a sandbox for `spec` (or for the given SandboxSpec fields) and return it.

    Use it as a context manager: leaving the block destroys the sandbox.
    """
    if spec is None:
        spec = SandboxSpec(**fields)
    elif fields:
        spec = attrs.evolve(spec, **fields)
    selection = select(spec)
    logger.debug("selection: %s", selection.explain().replace("\n", " | "))
    backend = get_backend(selection.backend)
    if spec.publish_all:
        spec = spec.with_exposed(backend.image_config(spec.image, spec.pull).exposed_ports)
    plan = make_plan(spec)
    verdict = backend.check(plan)
    if verdict.refusals:
        raise UnsupportedFeature(f"backend {backend.name!r}: " + "; ".join(verdict.refusals))
    check_networks(backend, plan)
    ensure_volumes(backend, plan)
    with pinned_sources(plan.mounts) as pinned:
        # The engine mounts the pinned copies; the plan kept by the sandbox, the sources.
        mounts = tuple(attrs.evolve(m, source=pinned.get(m.source, m.source)) for m in plan.mounts)
        # Recorded, so that a start after a stop pins the same paths again.
        plan = attrs.evolve(plan, labels={**plan.labels, **pins_label(plan.mounts, pinned)})
        handle = _create(backend, attrs.evolve(plan, mounts=mounts))
    _start_reaper(backend, plan)
    if spec.keep:
        # Meant to outlive this process: neither its exit nor gc (unless asked) removes it.
        return Sandbox(backend, handle, spec, plan, verdict.statuses, None)
    sandbox = Sandbox(backend, handle, spec, plan, verdict.statuses, _live)
    _live.add(sandbox)
    return sandbox
