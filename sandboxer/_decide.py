"""The one decider: what a backend can do (`Capabilities`), and whether it can run a plan
(`decide`, which `Backend.check` and the selector both use)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs

from ._models import ISOLATION_LEVELS
from ._plan import LaunchPlan
from ._vocabulary import Control, Isolation, Kind, NetworkMode
from .images.disk import is_disk_image


def _by_control(mapping: Mapping[str, str]) -> Mapping[Control, str]:
    return MappingProxyType({Control(control): text for control, text in mapping.items()})


def _networks(names: Iterable[str]) -> frozenset[NetworkMode]:
    return frozenset(NetworkMode(name) for name in names)


def _limits(names: Iterable[str]) -> frozenset[Control]:
    return frozenset(Control(name) for name in names)


def _names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names)


def _frozen_statuses(mapping: Mapping[str, ControlStatus]) -> Mapping[str, ControlStatus]:
    return MappingProxyType(dict(mapping))


@attrs.frozen
class Capabilities:
    """What a backend can do, declared as class-level data; the selector reads only this."""

    kind: Kind = attrs.field(converter=Kind)
    isolation: Isolation = attrs.field(converter=Isolation)
    init: bool  # can run a real init as PID 1
    custom_kernel: bool
    nested: bool
    networks: frozenset[NetworkMode] = attrs.field(converter=_networks)
    # The limit controls it can set: cpu_limit, memory_limit, pids_limit.
    limits: frozenset[Control] = attrs.field(converter=_limits)
    mounts: bool
    ports: bool
    start_seconds: float  # typical launch-to-exec-ready cost, for ranking and max_start_seconds
    # Profile control -> how this backend enforces it. A control missing here cannot be enforced.
    controls: Mapping[Control, str] = attrs.field(converter=_by_control)
    # Profile control -> why this backend cannot enforce it.
    unenforceable: Mapping[Control, str] = attrs.field(factory=dict, converter=_by_control)
    # Boots a user's own disk image (an absolute path to a .qcow2, .img or .raw file).
    disk_images: bool = False
    # The OCI runtimes (`runtime=`) it can run an app container under, when the host has
    # them; empty: it runs no OCI runtime of the caller's choosing.
    runtimes: frozenset[str] = attrs.field(default=frozenset(), converter=_names)


@attrs.frozen
class ControlStatus:
    """Whether one profile control is enforced on a sandbox, and by what (or why not)."""

    enforced: bool
    mechanism: str

    def __str__(self) -> str:
        return ("enforced: " if self.enforced else "NOT enforced: ") + self.mechanism


@attrs.frozen(kw_only=True)
class Verdict:
    """`Backend.check`'s answer: how each control of the plan would be enforced, and
    why the plan cannot run here at all (empty when it can)."""

    statuses: Mapping[str, ControlStatus] = attrs.field(converter=_frozen_statuses)
    refusals: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.refusals


def static_enforcement(plan: LaunchPlan, caps: Capabilities) -> dict[str, ControlStatus]:
    """How a backend with `caps` enforces each control the plan asks for, as declared."""
    return {
        control: ControlStatus(True, caps.controls[control])
        if control in caps.controls
        else ControlStatus(False, caps.unenforceable.get(control, "not supported"))
        for control in plan.controls
    }


def decide(
    plan: LaunchPlan,
    caps: Capabilities,
    enforcement: Mapping[str, ControlStatus],
    refusals: Iterable[str] = (),
) -> Verdict:
    """Whether a backend with `caps`, enforcing controls as `enforcement` says, can run
    `plan`: every reason it cannot, with `refusals` (the adapter's own) last."""
    statuses: dict[str, ControlStatus] = dict(enforcement)
    statuses.update((r.control, ControlStatus(False, r.reason)) for r in plan.relaxed)
    relaxed = {r.control for r in plan.relaxed}
    problems = _requirement_mismatches(plan, caps)
    unenforced = {
        control: status.mechanism
        for control, status in statuses.items()
        if not status.enforced and control not in plan.allow_unenforced | relaxed
    }
    if unenforced:
        whys = "; ".join(f"{control}: {why}" for control, why in unenforced.items())
        problems.append(
            f"cannot enforce profile {plan.profile_name!r} controls ({whys}); "
            f"pass allow_unenforced={sorted(unenforced)} to accept that"
        )
    return Verdict(statuses=statuses, refusals=(*problems, *refusals))


def _requirement_mismatches(plan: LaunchPlan, caps: Capabilities) -> list[str]:
    """What `plan` needs that a backend with `caps` declares it cannot do."""
    req = plan.requirements
    problems = []
    if req.kind is not None and caps.kind != req.kind:
        problems.append(f"runs {caps.kind} sandboxes, {req.kind} asked for")
    if req.isolation is not None and _level(caps.isolation) < _level(req.isolation):
        problems.append(f"isolation {caps.isolation} is weaker than {req.isolation}")
    if req.custom_kernel and not caps.custom_kernel:
        problems.append("shares the host kernel; a custom kernel was asked for")
    if req.init and not caps.init:
        problems.append("cannot run an init system as PID 1")
    if req.nested and not caps.nested:
        problems.append("cannot run nested containers")
    if req.max_start_seconds is not None and caps.start_seconds > req.max_start_seconds:
        problems.append(
            f"starts in about {caps.start_seconds:g}s, more than max_start_seconds="
            f"{req.max_start_seconds:g}"
        )
    if is_disk_image(plan.image) and not caps.disk_images:
        problems.append(f"cannot boot a disk image ({plan.image})")
    if plan.mounts and not caps.mounts:
        problems.append("cannot share host directories")
    if plan.ports and not caps.ports:
        problems.append("cannot publish ports")
    if plan.network not in caps.networks:
        problems.append(f"has no {plan.network!r} network")
    if plan.runtime is not None and plan.runtime not in caps.runtimes:
        problems.append(_runtime_mismatch(plan.runtime, caps.runtimes))
    asked = {"cpu_limit": plan.cpus, "memory_limit": plan.memory, "pids_limit": plan.pids}
    settable = caps.limits | plan.allow_unenforced
    unlimited = [n for n, v in asked.items() if v is not None and n not in settable]
    if unlimited:
        problems.append("cannot limit " + ", ".join(n.removesuffix("_limit") for n in unlimited))
    return problems


def _runtime_mismatch(runtime: str, runtimes: frozenset[str]) -> str:
    if not runtimes:
        return (
            f"runs no OCI runtime of the caller's choosing ({runtime!r} asked for): "
            "runtime= applies to app-container engines"
        )
    return f"cannot run OCI runtime {runtime!r} (only {', '.join(sorted(runtimes))})"


def _level(level: str) -> int:
    return ISOLATION_LEVELS.index(level) if level in ISOLATION_LEVELS else -1
