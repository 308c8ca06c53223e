"""Picks a backend for a spec: a pure function of requirements, capabilities and availability."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs

from ._backend import Availability, Capabilities
from ._errors import BackendUnavailable, UnsupportedFeature
from ._models import ISOLATION_LEVELS, Requirements, SandboxSpec
from ._registry import backend_class, backend_names

# Ties on start cost go to the earlier name; unknown (third-party) backends come last.
DEFAULT_PREFERENCE = ("docker", "incus", "libvirt")
_PROBE_TTL_SECONDS = 5.0


@attrs.frozen
class Selection:
    """The chosen backend, the ranked candidates, and a reason for every decision."""

    backend: str
    reasons: tuple[str, ...]
    rejected: Mapping[str, str]
    candidates: tuple[str, ...]

    def explain(self) -> str:
        lines = [f"selected {self.backend}: " + "; ".join(self.reasons)]
        if len(self.candidates) > 1:
            lines.append("ranked: " + " > ".join(self.candidates))
        lines += [f"rejected {name}: {why}" for name, why in self.rejected.items()]
        return "\n".join(lines)


def _mismatches(spec: SandboxSpec, caps: Capabilities) -> list[str]:
    """Why a backend with `caps` cannot run `spec` (empty when it can)."""
    req = spec.requirements
    problems = []
    if req.kind is not None and caps.kind != req.kind:
        problems.append(f"runs {caps.kind} sandboxes, {req.kind} asked for")
    if req.isolation is not None and ISOLATION_LEVELS.index(caps.isolation) < ISOLATION_LEVELS.index(
        req.isolation
    ):
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
    if spec.mounts and not caps.mounts:
        problems.append("cannot share host directories")
    if spec.ports and not caps.ports:
        problems.append("cannot publish ports")
    if spec.effective_network not in caps.networks:
        problems.append(f"has no {spec.effective_network!r} network")
    return problems


def _fit(req: Requirements, caps: Capabilities) -> tuple[int, str]:
    """How naturally a backend fits what was asked (lower is better), and why."""
    if req.custom_kernel or req.isolation == "kernel":
        return (0, "needs its own kernel") if caps.kind == "vm" else (1, "")
    if req.init or req.nested:
        return (0, "needs an init system / nesting: a system container") if caps.kind == "system" else (1, "")
    return (0, "")


def rank(
    spec: SandboxSpec,
    capabilities: Mapping[str, Capabilities],
    availability: Mapping[str, Availability],
    preference: Sequence[str] = DEFAULT_PREFERENCE,
) -> Selection:
    """Choose among `capabilities` for `spec`; raises if none (or the asked backend) fits."""
    rejected: dict[str, str] = {}
    fitting: list[str] = []
    for name, caps in capabilities.items():
        problems = _mismatches(spec, caps)
        state = availability.get(name, Availability(False, "not probed"))
        if not problems and not state.available:
            problems.append(f"unavailable: {state.reason}" + (f" (fix: {state.fix})" if state.fix else ""))
        if spec.backend is not None and name != spec.backend:
            problems = problems or ["another backend was asked for explicitly"]
        if problems:
            rejected[name] = "; ".join(problems)
        else:
            fitting.append(name)

    def order(name: str) -> tuple[int, float, int]:
        pref = preference.index(name) if name in preference else len(preference)
        return (_fit(spec.requirements, capabilities[name])[0], capabilities[name].start_seconds, pref)

    fitting.sort(key=order)
    if not fitting:
        details = "; ".join(f"{n}: {why}" for n, why in rejected.items())
        if spec.backend is not None and spec.backend in rejected:
            raise UnsupportedFeature(f"backend {spec.backend!r} cannot run this spec: {rejected[spec.backend]}")
        raise UnsupportedFeature(f"no backend can run this spec ({details})")
    chosen = fitting[0]
    caps = capabilities[chosen]
    reasons = []
    if spec.backend is not None:
        reasons.append("asked for explicitly")
    fit_reason = _fit(spec.requirements, caps)[1]
    if fit_reason:
        reasons.append(fit_reason)
    reasons.append(f"{caps.kind} sandbox, isolation {caps.isolation}, starts in ~{caps.start_seconds:g}s")
    if len(fitting) > 1:
        reasons.append(f"ranked first of {len(fitting)} fitting backends by fit, start cost, preference")
    return Selection(chosen, tuple(reasons), rejected, tuple(fitting))


_probe_cache: dict[str, tuple[float, Availability]] = {}


def _probe(name: str) -> Availability:
    try:
        return backend_class(name).probe()
    except BackendUnavailable as exc:
        return Availability(False, exc.reason, exc.fix)


def probe_all(names: Sequence[str], *, fresh: bool = False) -> dict[str, Availability]:
    """Availability of each backend, probed in parallel and cached for a few seconds."""
    now = time.monotonic()
    stale = [n for n in names if fresh or n not in _probe_cache or now - _probe_cache[n][0] > _PROBE_TTL_SECONDS]
    if stale:
        with ThreadPoolExecutor(max_workers=len(stale)) as pool:
            for name, state in zip(stale, pool.map(_probe, stale), strict=True):
                _probe_cache[name] = (time.monotonic(), state)
    return {name: _probe_cache[name][1] for name in names}


def select(spec: SandboxSpec | Requirements | None = None, **fields: object) -> Selection:
    """The backend `launch` would use for `spec` (or for bare requirements), with the reasons."""
    if isinstance(spec, Requirements):
        spec = SandboxSpec(requirements=spec, **fields)  # type: ignore[arg-type]
    elif spec is None:
        spec = SandboxSpec(**fields)  # type: ignore[arg-type]
    capabilities: dict[str, Capabilities] = {}
    unloadable: dict[str, Availability] = {}
    for name in backend_names():
        try:
            capabilities[name] = backend_class(name).capabilities
        except BackendUnavailable as exc:
            unloadable[name] = Availability(False, exc.reason, exc.fix)
    if spec.backend is not None and spec.backend not in capabilities:
        reason = unloadable[spec.backend].reason if spec.backend in unloadable else "unknown backend"
        raise BackendUnavailable(spec.backend, reason, unloadable.get(spec.backend, Availability(False)).fix)
    needed = [spec.backend] if spec.backend else list(capabilities)
    availability = probe_all(needed)
    selection = rank(spec, capabilities, availability)
    if unloadable:
        rejected = dict(selection.rejected)
        rejected.update({n: f"unavailable: {a.reason}" for n, a in unloadable.items()})
        selection = attrs.evolve(selection, rejected=rejected)
    return selection
