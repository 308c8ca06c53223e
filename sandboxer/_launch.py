"""`launch`: spec -> selection -> plan -> engine, with cleanup whatever goes wrong."""

from __future__ import annotations

import atexit
import contextlib
import threading
from typing import Any

import attrs

from ._backend import Backend, ControlStatus, LaunchPlan
from ._errors import UnsupportedFeature
from ._labels import EXEC_USER, KEEP, LAUNCH, new_name, ownership_labels
from ._log import logger, timed
from ._models import SandboxSpec, check_mount_sources
from ._ports import assign_host_ports
from ._registry import get_backend
from ._sandbox import Sandbox
from ._selector import select

# Sandboxes this process launched and has not destroyed; removed at interpreter exit.
_live: list[object] = []
_live_lock = threading.Lock()


def make_plan(spec: SandboxSpec) -> LaunchPlan:
    """Resolve every default of `spec`: name, labels, network, host ports, user, limits."""
    profile = spec.profile
    res = spec.resources
    user = spec.user if spec.user is not None else profile.user
    labels = {**spec.labels, **ownership_labels()}
    if user is not None:
        labels[EXEC_USER] = user
    if spec.keep:
        labels[KEEP] = "true"
    return LaunchPlan(
        spec=spec,
        name=spec.name or new_name(),
        labels=labels,
        network=spec.effective_network,
        ports=assign_host_ports(spec.ports),
        user=user,
        cpus=res.cpus if res.cpus is not None else profile.cpus,
        memory=res.memory if res.memory is not None else profile.memory,
        pids=res.pids if res.pids is not None else profile.pids,
    )


def relaxed_by_spec(plan: LaunchPlan) -> dict[str, ControlStatus]:
    """Controls the spec itself chose to relax: reported as not enforced, yet not refused,
    since the caller asked for it explicitly (e.g. ports need a network)."""
    profile = plan.profile
    relaxed = {}
    if "network" in profile.controls() and plan.network != profile.network:
        reason = f"relaxed by the spec: network {plan.network!r} (profile: {profile.network!r})"
        relaxed["network"] = ControlStatus(False, reason)
    if "non_root_user" in profile.controls() and _is_root(plan.user):
        reason = f"relaxed by the spec: user {plan.user!r} is root"
        relaxed["non_root_user"] = ControlStatus(False, reason)
    return relaxed


def _is_root(user: str | None) -> bool:
    """Whether `user` ('name', 'uid' or 'uid:gid') names the root user."""
    return user is not None and user.split(":", 1)[0].strip() in ("0", "root")


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
    plan = make_plan(spec)
    relaxed = relaxed_by_spec(plan)
    enforcement = {**backend.enforcement(plan), **relaxed}
    refused = {
        control: status.mechanism
        for control, status in enforcement.items()
        if not status.enforced and control not in spec.allow_unenforced and control not in relaxed
    }
    if refused:
        details = "; ".join(f"{c}: {why}" for c, why in refused.items())
        raise UnsupportedFeature(
            f"backend {backend.name!r} cannot enforce profile {spec.profile.name!r} controls "
            f"({details}); pass allow_unenforced={sorted(refused)} to accept that"
        )
    check_mount_sources(spec)
    handle = _create(backend, plan)
    if spec.keep:
        # Meant to outlive this process: neither its exit nor gc (unless asked) removes it.
        return Sandbox(backend, handle, plan, enforcement, [])
    sandbox = Sandbox(backend, handle, plan, enforcement, _live)
    with _live_lock:
        _live.append(sandbox)
    return sandbox


@atexit.register
def _destroy_leftovers() -> None:
    for sandbox in list(_live):
        assert isinstance(sandbox, Sandbox)
        try:
            sandbox.destroy()
        except Exception:
            logger.exception("could not destroy %s at exit", sandbox.name)
