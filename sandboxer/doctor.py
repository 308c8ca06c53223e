"""`diagnose()`: can each engine run a sandbox now, and if not, the command that fixes it.

Each backend class reports its own `Check`s (`Backend.diagnose`); a check lands in the
column of the table it names (`Check.column`: installed, reachable, permission). Every
check counts for "can run now".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ._backend import Availability, Backend, Check, CheckColumn
from ._errors import BackendUnavailable, ImageNotFound, SandboxError
from ._models import SandboxSpec
from ._registry import backend_class, backend_names
from ._selector import probe_all, run_bounded, select
from .images.rootfs import BUSYBOX_FIX, _busybox

DIAGNOSE_TIMEOUT_SECONDS = 10.0


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


@attrs.frozen
class EngineReport:
    """One engine: its checks and whether its probe says it can launch now."""

    name: str
    checks: tuple[Check, ...]
    availability: Availability

    def column(self, column: CheckColumn) -> bool | None:
        """Whether the checks of `column` pass; None when no check is about it."""
        about = [c for c in self.checks if c.column == column]
        if not about and column == CheckColumn.REACHABLE:
            return self.availability.available  # the probe is the reachability test of last resort
        return all(c.ok for c in about) if about else None

    @property
    def ready(self) -> bool:
        """Can run a sandbox now: the probe passes and so does every check."""
        return self.availability.available and all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[Check]:
        failed = [c for c in self.checks if not c.ok]
        if not failed and not self.availability.available:
            state = self.availability
            failed.append(Check("probe", False, state.reason, state.fix))
        return failed

    def to_dict(self) -> dict[str, Any]:
        return {
            **{column.value: self.column(column) for column in CheckColumn},
            "ready": self.ready,
            "available": self.availability.available,
            "reason": self.availability.reason,
            "checks": [attrs.asdict(c) for c in self.checks],
        }


@attrs.frozen
class DoctorReport:
    """Every engine asked about, the host's shared checks, and the default path's verdict."""

    engines: tuple[EngineReport, ...]
    host: tuple[Check, ...]
    default: str | None  # what select(SandboxSpec()) picks; None when nothing can
    default_reason: str
    named: tuple[str, ...]  # engines asked for by name (they must be ready too)

    @property
    def ok(self) -> bool:
        """The default path can launch (and every engine asked for by name can run now)."""
        ready = {e.name: e.ready for e in self.engines}
        must = ([self.default] if self.default else []) + list(self.named)
        return (
            self.default is not None
            and all(ready.get(name, False) for name in must)
            and all(c.ok for c in self.host)
        )

    def _headline(self) -> str:
        if self.ok:
            return f"OK: the default backend {self.default} can run a sandbox now"
        if self.default is None:
            return "NOT OK: no backend can run a default sandbox"
        broken = [
            e.name for e in self.engines if not e.ready and e.name in {self.default, *self.named}
        ]
        if broken:
            return f"NOT OK: {', '.join(broken)} cannot run a sandbox now"
        return "NOT OK: the host is missing what the built-in images need"

    def render(self) -> str:
        header = ("engine", *CheckColumn, "can run now")
        rows = [
            (
                e.name + (" *" if e.name == self.default else ""),
                *(_yes_no(e.column(column)) for column in CheckColumn),
                _yes_no(e.ready),
            )
            for e in self.engines
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [f"sandboxer doctor: {self._headline()}", ""]
        lines += [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]
        ]
        if self.default:
            lines.append(f"* the default backend: {self.default_reason}")
        else:
            lines.append(f"no default backend: {self.default_reason}")
        lines += [f"host: {c.name}: {'yes' if c.ok else 'NO'}" for c in self.host]
        problems = [(e.name, c) for e in self.engines for c in e.problems]
        problems += [("host", c) for c in self.host if not c.ok]
        if problems:
            lines += ["", "problems:"]
            for where, check in problems:
                lines.append(f"  {where}: {check.name}: {check.detail}")
                lines.append(
                    f"    fix: {check.fix}" if check.fix else "    fix: (no command known)"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "default": {"backend": self.default, "reason": self.default_reason},
            "host": [attrs.asdict(c) for c in self.host],
            "engines": {e.name: e.to_dict() for e in self.engines},
        }


def _host_checks() -> tuple[Check, ...]:
    """What every backend's built-in images need from the host."""
    try:
        _busybox()
    except ImageNotFound as exc:
        return (Check("busybox for the built-in images", False, str(exc), BUSYBOX_FIX),)
    return (Check("busybox for the built-in images", True),)


def _engine_checks(classes: dict[str, type[Backend]]) -> dict[str, list[Check]]:
    """Each class's own checks, run in parallel, each bounded in time."""
    calls = {name: cls.diagnose for name, cls in classes.items()}
    results = run_bounded(calls, DIAGNOSE_TIMEOUT_SECONDS)
    checks: dict[str, list[Check]] = {}
    for name in calls:
        if name not in results:
            timeout = f"diagnose() did not finish within {DIAGNOSE_TIMEOUT_SECONDS:g}s"
            checks[name] = [
                Check("reachable: engine answers", False, timeout, column=CheckColumn.REACHABLE)
            ]
            continue
        result = results[name]
        if isinstance(result, Exception):
            failure = f"diagnose() failed: {type(result).__name__}: {result}"
            checks[name] = [Check("diagnose", False, failure)]
        else:
            checks[name] = list(result)
    return checks


def diagnose(names: Sequence[str] | None = None) -> DoctorReport:
    """Check the engines called `names` (default: every registered one) and the default path."""
    every = backend_names()
    availability = probe_all(sorted({*every, *(names or ())}), fresh=True)
    try:
        selection = select(SandboxSpec())
        default: str | None = selection.backend
        default_reason = selection.reason
    except SandboxError as exc:
        default, default_reason = None, str(exc)
    wanted = list(dict.fromkeys([*(names or every), *([default] if default else [])]))

    classes: dict[str, type[Backend]] = {}
    sdk: dict[str, Check] = {}
    for name in wanted:
        try:
            classes[name] = backend_class(name)
            sdk[name] = Check(
                "installed: Python SDK",
                True,
                classes[name].__module__,
                column=CheckColumn.INSTALLED,
            )
        except BackendUnavailable as exc:
            # The registry's fix for a missing SDK is the pip hint from INSTALL_HINTS.
            sdk[name] = Check(
                "installed: Python SDK", False, exc.reason, exc.fix, column=CheckColumn.INSTALLED
            )
    checks = _engine_checks(classes)
    engines = tuple(
        EngineReport(name, (sdk[name], *checks.get(name, [])), availability[name])
        for name in wanted
    )
    return DoctorReport(engines, _host_checks(), default, default_reason, tuple(names or ()))
