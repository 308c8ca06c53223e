"""Picks a backend for a spec: a pure function of requirements, capabilities and availability.

`rank` holds every rule and touches nothing; `select` feeds it the registered backends'
class-level capabilities and their availability (probed in parallel, bounded, cached).

The rules, in order: a kind asked for wins; a custom kernel or kernel isolation needs a
VM; an init system (several services, an OS-like environment) or nesting fits a system
container; anything else is a single process, which fits an app container. Backends that
cannot meet a requirement are rejected with the reason; the rest rank by how far their kind
is from that natural kind, then by declared start cost, then by the preference order.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import attrs

from ._backend import Availability, Backend, Capabilities, LaunchPlan
from ._decide import decide, static_enforcement
from ._errors import BackendUnavailable, InvalidSpec, UnsupportedFeature
from ._log import logger
from ._models import KINDS, Requirements, SandboxSpec
from ._plan import make_plan
from ._registry import backend_class, backend_names, get_backend

# Last tie-break; names not listed rank after these, alphabetically.
DEFAULT_PREFERENCE = ("docker", "incus", "libvirt")
PREFERENCE_ENV = "SANDBOXER_BACKEND_PREFERENCE"
PROBE_TIMEOUT_SECONDS = 1.0
_PROBE_TTL = 5.0  # seconds

T = TypeVar("T")


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@attrs.frozen
class Selection:
    """The chosen backend, the ranked candidates, and a reason for every decision."""

    backend: str
    reasons: tuple[str, ...]
    rejected: Mapping[str, str] = attrs.field(converter=_frozen)
    candidates: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def explain(self) -> str:
        lines = [f"selected {self.backend}: {self.reason}"]
        if len(self.candidates) > 1:
            lines.append("ranked: " + " > ".join(self.candidates))
        lines += [f"rejected {name}: {why}" for name, why in self.rejected.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "reason": self.reason,
            "reasons": list(self.reasons),
            "candidates": list(self.candidates),
            "rejected": dict(self.rejected),
        }


def natural_kind(req: Requirements) -> tuple[str, str]:
    """The kind of sandbox that naturally fits `req`, and why."""
    if req.kind is not None:
        return req.kind, f"kind={req.kind!r} was asked for"
    if req.custom_kernel:
        return "vm", "a custom kernel (another OS, kernel modules) needs a virtual machine"
    if req.isolation == "kernel":
        return "vm", "kernel isolation needs a virtual machine"
    if req.init:
        return "system", (
            "an init system (several services, an OS-like environment) fits a system container"
        )
    if req.nested:
        return "system", "nested containers fit a system container"
    return "app", "a single process fits an app container, the fastest to start"


def _mismatches(plan: LaunchPlan, caps: Capabilities, cls: type[Backend] | None) -> list[str]:
    """Why a backend with `caps` (of class `cls`, when loaded) cannot run `plan`: the
    verdict `Backend.check` reaches, with the declared enforcement, so select() never
    picks a backend that launch would then refuse."""
    refusals = cls.refusals(plan) if cls is not None else []
    return list(decide(plan, caps, static_enforcement(plan, caps), refusals).refusals)


def _kind_distance(kind: str, natural: str) -> int:
    """How far `kind` is from `natural` along app < system < vm (unknown kinds last)."""
    if kind not in KINDS or natural not in KINDS:
        return len(KINDS)
    return abs(KINDS.index(kind) - KINDS.index(natural))


def _unavailable(state: Availability) -> str:
    return f"unavailable: {state.reason or 'no reason given'}" + (
        f" (fix: {state.fix})" if state.fix else ""
    )


def rank(
    spec: SandboxSpec,
    capabilities: Mapping[str, Capabilities],
    availability: Mapping[str, Availability],
    preference: Sequence[str] = DEFAULT_PREFERENCE,
    classes: Mapping[str, type[Backend]] | None = None,
) -> Selection:
    """Choose among `capabilities` for `spec`; a backend in `availability` without
    capabilities (it could not be loaded) is rejected with its reason. `classes` adds
    each adapter's own refusals of the plan.

    Raises UnsupportedFeature when no backend (or the one asked for) can meet the spec,
    BackendUnavailable when those that can are not available.
    """
    explicit = spec.backend
    if explicit is not None and explicit not in capabilities:
        missing = availability.get(explicit, Availability(False, "no such backend"))
        raise BackendUnavailable(explicit, missing.reason, missing.fix)
    natural, natural_why = natural_kind(spec.requirements)

    def order(name: str) -> tuple[int, float, int, str]:
        caps = capabilities[name]
        pref = preference.index(name) if name in preference else len(preference)
        return (_kind_distance(caps.kind, natural), caps.start_seconds, pref, name)

    def state(name: str) -> Availability:
        return availability.get(name, Availability(False, "not probed"))

    plan = make_plan(spec, choose_ports=False)
    rejected: dict[str, str] = {}
    capable: list[str] = []  # meet the spec, whether available or not
    for name, caps in capabilities.items():
        problems = _mismatches(plan, caps, (classes or {}).get(name))
        if explicit is not None and name != explicit:
            rejected[name] = f"backend={explicit!r} was asked for"
        elif problems:
            rejected[name] = "; ".join(problems)
        else:
            capable.append(name)
    capable.sort(key=order)
    fitting = [name for name in capable if state(name).available]
    rejected.update((name, _unavailable(state(name))) for name in capable if name not in fitting)
    rejected.update((n, _unavailable(s)) for n, s in availability.items() if n not in capabilities)

    if not fitting:
        if explicit is not None and explicit not in capable:
            raise UnsupportedFeature(
                f"backend {explicit!r} cannot run this spec: {rejected[explicit]}"
            )
        if capable:
            others = "; ".join(f"{n}: {why}" for n, why in rejected.items() if n not in capable)
            extra = f" (and no other backend can run this spec: {others})" if others else ""
            best = state(capable[0])
            raise BackendUnavailable(capable[0], (best.reason or "not available") + extra, best.fix)
        details = "; ".join(f"{n}: {why}" for n, why in rejected.items())
        raise UnsupportedFeature(f"no backend can run this spec: {details}")

    chosen = fitting[0]
    caps = capabilities[chosen]
    if explicit:
        reasons = [f"backend={explicit!r} was asked for explicitly and meets the spec"]
    else:
        reasons = [natural_why]
        if caps.kind != natural:
            reasons.append(
                f"no available {natural} backend meets the spec; {caps.kind} is the nearest kind"
            )
    start = f"{caps.kind} sandbox, isolation {caps.isolation}, starts in ~{caps.start_seconds:g}s"
    if spec.requirements.max_start_seconds is not None:
        start += f" (within max_start_seconds={spec.requirements.max_start_seconds:g})"
    reasons.append(start)
    if len(fitting) > 1:
        reasons.append(_why_not(chosen, fitting[1], capabilities, order, preference))
    return Selection(chosen, tuple(reasons), rejected, tuple(fitting))


def _why_not(
    chosen: str,
    runner_up: str,
    capabilities: Mapping[str, Capabilities],
    order: Callable[[str], tuple[int, float, int, str]],
    preference: Sequence[str],
) -> str:
    """Which tie-break put `chosen` ahead of `runner_up`."""
    mine, theirs = order(chosen), order(runner_up)
    other = capabilities[runner_up]
    if mine[0] != theirs[0]:
        return f"a closer fit than {runner_up} ({other.kind})"
    if mine[1] != theirs[1]:
        return f"starts faster than {runner_up} (~{mine[1]:g}s vs ~{theirs[1]:g}s)"
    if mine[2] != theirs[2]:
        return f"preferred over {runner_up} by the preference order {','.join(preference)}"
    return f"ahead of {runner_up} by name (no preference between them)"


def resolve_preference(preference: Sequence[str] | str | None = None) -> tuple[str, ...]:
    """The tie-break order: `preference`, else $SANDBOXER_BACKEND_PREFERENCE, then the default."""
    if preference is None:
        preference = os.environ.get(PREFERENCE_ENV, "")
    if isinstance(preference, str):
        preference = preference.split(",")
    chosen = tuple(dict.fromkeys(n.strip() for n in preference if n.strip()))
    return chosen + tuple(n for n in DEFAULT_PREFERENCE if n not in chosen)


def run_bounded(calls: Mapping[str, Callable[[], T]], timeout: float) -> dict[str, T | Exception]:
    """Run `calls` in parallel: the result or the exception of each that returned within
    `timeout` seconds; those that did not are missing. Daemon threads: a hung call never
    blocks the interpreter's exit."""
    results: dict[str, T | Exception] = {}

    def run(key: str, call: Callable[[], T]) -> None:
        try:
            results[key] = call()
        except Exception as exc:  # reported to the caller, never lost
            results[key] = exc

    threads = [
        threading.Thread(target=run, args=item, name=f"sandboxer-{item[0]}", daemon=True)
        for item in calls.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(results)  # a snapshot: calls finishing later no longer count


# Keyed by class, so a backend re-registered under the same name is probed afresh.
_probe_cache: dict[type[Backend], tuple[float, Availability]] = {}
# Probes still running, each with an event set once its result is cached: concurrent
# callers wait for that one probe instead of starting another (or giving up).
_probing: dict[type[Backend], threading.Event] = {}
_probe_lock = threading.Lock()


def _probe(cls: type[Backend]) -> Availability:
    try:
        state = cls.probe()
        if not isinstance(state, Availability):
            state = Availability(False, f"probe returned {state!r}, not an Availability")
    except Exception as exc:
        state = Availability(False, f"probe failed: {type(exc).__name__}: {exc}")
    with _probe_lock:
        _probe_cache[cls] = (time.monotonic(), state)
        done = _probing.pop(cls, None)
    if done is not None:
        done.set()
    return state


def _late(cls: type[Backend]) -> Availability:
    with _probe_lock:
        entry = _probe_cache.get(cls)
    if entry is not None:
        return entry[1]
    return Availability(False, f"did not answer a probe within {PROBE_TIMEOUT_SECONDS:g}s")


def probe_all(names: Sequence[str], *, fresh: bool = False) -> dict[str, Availability]:
    """Availability of each backend: probed in parallel, at most PROBE_TIMEOUT_SECONDS,
    cached for a few seconds. A backend that cannot even be loaded is unavailable."""
    states: dict[str, Availability] = {}
    classes: dict[str, type[Backend]] = {}
    for name in names:
        try:
            classes[name] = backend_class(name)
        except BackendUnavailable as exc:
            states[name] = Availability(False, exc.reason, exc.fix)
    stale: dict[str, Callable[[], Availability]] = {}
    pending: dict[str, threading.Event] = {}
    with _probe_lock:
        for name, cls in classes.items():
            entry = _probe_cache.get(cls)
            if entry is not None and not fresh and time.monotonic() - entry[0] <= _PROBE_TTL:
                states[name] = entry[1]
            elif cls in _probing:
                if entry is not None:
                    states[name] = entry[1]  # a refresh is under way: the last answer will do
                else:
                    pending[name] = _probing[cls]
            else:
                _probing[cls] = threading.Event()
                stale[name] = functools.partial(_probe, cls)
    results = run_bounded(stale, PROBE_TIMEOUT_SECONDS)
    for name in stale:
        result = results.get(name)
        states[name] = result if isinstance(result, Availability) else _late(classes[name])
    for name, event in pending.items():
        event.wait(PROBE_TIMEOUT_SECONDS)
        states[name] = _late(classes[name])
    for name, state in states.items():
        if not state.available:
            logger.debug("backend %s unavailable: %s", name, state.reason)
    return {name: states[name] for name in names}


def _as_spec(spec: SandboxSpec | Requirements | None, fields: Mapping[str, Any]) -> SandboxSpec:
    if isinstance(spec, Requirements):
        return SandboxSpec(requirements=spec, **fields)
    if spec is None:
        return SandboxSpec(**fields)
    return attrs.evolve(spec, **fields) if fields else spec


def engines_holding(names: Sequence[str], candidates: Iterable[str]) -> list[str]:
    """Those of `candidates` (backend names) on which every network in `names` exists;
    UnsupportedFeature, naming where each one is, when no single engine has them all."""
    where: dict[str, list[str]] = {name: [] for name in names}
    holding = []
    for backend in candidates:
        try:
            driver = get_backend(backend).networks()
        except UnsupportedFeature:
            continue
        present = {name for name in names if driver.inspect(name) is not None}
        for name in present:
            where[name].append(backend)
        if present == set(names):
            holding.append(backend)
    if not any(where.values()):
        # Named nowhere: a mistake in the spec, not something an engine lacks.
        raise InvalidSpec(
            "networks",
            f"no engine has a network called {', '.join(map(repr, names))}: create it first "
            "(sandboxer.Network.create or `sandboxer network create`)",
        )
    if not holding:
        placed = "; ".join(f"{n} on {', '.join(where[n]) or 'no engine'}" for n in names)
        raise UnsupportedFeature(
            f"networks: no engine holds all of {', '.join(names)} ({placed}); "
            "a network spans one engine, and a sandbox joins networks of its own engine only"
        )
    return holding


def select(
    spec: SandboxSpec | Requirements | None = None,
    /,
    *,
    preference: Sequence[str] | str | None = None,
    **fields: Any,
) -> Selection:
    """The backend `launch` would use for `spec` (or bare requirements, or spec fields),
    with the reasons. `preference` (or $SANDBOXER_BACKEND_PREFERENCE) breaks final ties."""
    spec = _as_spec(spec, fields)
    names = backend_names()
    if spec.backend is not None and spec.backend not in names:
        raise BackendUnavailable(spec.backend, f"no such backend; known: {', '.join(names)}")
    classes: dict[str, type[Backend]] = {}
    for name in names:
        with contextlib.suppress(BackendUnavailable):  # probe_all reports why
            classes[name] = backend_class(name)
    capabilities = {name: cls.capabilities for name, cls in classes.items()}
    # With backend= only that one is probed: the others are rejected whatever their state.
    unloadable = [name for name in names if name not in capabilities]
    availability = probe_all([spec.backend, *unloadable] if spec.backend else names)
    if spec.networks and spec.backend is None:
        # Its networks decide the engine: only one holding all of them can run it.
        ready = [name for name in capabilities if availability[name].available]
        holding = engines_holding(spec.networks, ready)
        capabilities = {n: c for n, c in capabilities.items() if n in holding}
    return rank(spec, capabilities, availability, resolve_preference(preference), classes)
