"""Finding our sandboxes on every engine, and reaping the ones whose owner is gone.

Only resources carrying sandboxer's labels are ever listed or removed; a sandbox goes when
its owner process (on this host) has exited, when its max_lifetime has ended, when it is
older than a bound, or when it belongs to a session being cleaned up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import attrs

from ._backend import SandboxInfo
from ._errors import EngineError, InvalidSpec, SandboxError, SandboxNotFound
from ._labels import KEEP, LAUNCH, SESSION, is_ours
from ._log import logger, timed
from ._registry import backend_names, get_backend
from ._selector import probe_all
from .ownership import created_at, expires_at, has_labels, owner_alive, owner_pid

# Ids are hex digests: a shorter prefix would match by accident too easily.
_MIN_ID_PREFIX = 4


@attrs.frozen
class Inventory:
    """Our sandboxes on every engine asked about, and why any engine could not be listed."""

    sandboxes: tuple[SandboxInfo, ...]
    # Backend -> why listing it failed (an engine that should have answered).
    errors: Mapping[str, str]

    def find(self, name_or_id: str) -> SandboxInfo:
        """The sandbox here called `name_or_id`, or whose id is or starts with it."""
        by_name = [info for info in self.sandboxes if info.name == name_or_id]
        if len(by_name) == 1:
            return by_name[0]
        matches = by_name or [
            info
            for info in self.sandboxes
            if info.id == name_or_id
            or (len(name_or_id) >= _MIN_ID_PREFIX and info.id.startswith(name_or_id))
        ]
        if len(matches) > 1:
            listed = ", ".join(f"{info.backend}/{info.name}" for info in matches)
            raise InvalidSpec("sandbox", f"{name_or_id!r} is ambiguous: it matches {listed}")
        if not matches:
            unlisted = "".join(
                f"; {name} could not be listed: {why}" for name, why in self.errors.items()
            )
            raise SandboxNotFound(
                f"no sandbox of ours is called or has the id {name_or_id!r}{unlisted}"
            )
        return matches[0]


def _list(name: str, leftovers: bool) -> list[SandboxInfo]:
    backend = get_backend(name)
    with timed("list_sandboxes", backend=name):
        found = backend.list_sandboxes() + (backend.leftovers() if leftovers else [])
    return [info for info in found if is_ours(info.labels)]


def inventory(backends: Sequence[str] | None = None, *, leftovers: bool = False) -> Inventory:
    """Our sandboxes on `backends` (default: every backend available now), listed in parallel;
    with `leftovers`, also what the engines hold for sandboxes that are gone.

    A backend named explicitly that cannot answer is an error; an unnamed one is skipped.
    """
    names = list(backends) if backends is not None else backend_names()
    errors: dict[str, str] = {}
    ready = []
    for name, state in probe_all(names).items():
        reason = state.reason + (f" (fix: {state.fix})" if state.fix else "")
        if state.available:
            ready.append(name)
        elif backends is not None:
            errors[name] = reason
        else:
            logger.info("not listing %s: %s", name, reason)
    found: list[SandboxInfo] = []
    if ready:
        with ThreadPoolExecutor(max_workers=len(ready)) as pool:
            futures = {name: pool.submit(_list, name, leftovers) for name in ready}
        for name, future in futures.items():
            try:
                found += future.result()
            except SandboxError as exc:
                errors[name] = str(exc)
    found.sort(key=lambda info: (info.backend, created_at(info) or 0.0, info.name))
    return Inventory(tuple(found), errors)


def is_garbage(
    info: SandboxInfo,
    *,
    older_than: float | None,
    session: str | None,
    now: float,
    include_kept: bool = False,
) -> str | None:
    """Why `info` should be reaped under these rules, or None to keep it."""
    if not is_ours(info.labels):
        return None
    expires = expires_at(info)
    if expires is not None and expires <= now:
        # Its max_lifetime is over: it goes whoever owns it, kept or not, in any session.
        return "its max_lifetime has ended"
    if info.labels.get(KEEP) == "true" and not include_kept:
        return None  # launched to outlive its owner (`run --keep`): removed only when asked
    created = created_at(info)
    old = older_than is not None and created is not None and now - created > older_than
    if session is not None:
        # A session narrows the sweep to itself: all of it goes, or its old part only.
        if info.labels.get(SESSION) != session:
            return None
        if older_than is None:
            return f"belongs to session {session}"
        return f"older than {older_than:g}s in session {session}" if old else None
    if owner_alive(info) is False:
        return f"its owner (pid {owner_pid(info)}) has exited"
    if old:
        return f"older than {older_than:g}s"
    return None


class GcIncomplete(EngineError):
    """Some sandboxes (or whole engines) could not be reaped; the rest were."""

    def __init__(self, removed: list[SandboxInfo], failures: Mapping[str, str]) -> None:
        self.removed = removed
        self.failures = dict(failures)
        details = "; ".join(f"{what}: {why}" for what, why in self.failures.items())
        super().__init__(f"gc could not finish ({details})")


def gc(
    older_than: float | None = None,
    session: str | None = None,
    dry_run: bool = False,
    backends: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    include_kept: bool = False,
) -> list[SandboxInfo]:
    """Remove leftover sandboxes on every available backend (or on `backends`).

    Always those whose max_lifetime has ended. Without `session`: those whose owner
    process on this host has exited, and (with `older_than`, in seconds) those older
    than that. With `session`: every sandbox of that session (only the old ones if
    `older_than` is given too). `labels` narrows the sweep
    to sandboxes carrying all of them. Sandboxes launched with `keep` stay unless
    `include_kept`. Never anything without sandboxer's labels.
    Returns what was (with `dry_run`: would be) removed; raises GcIncomplete after trying
    everything if some removal or engine failed.
    """
    if older_than is not None and older_than < 0:
        raise InvalidSpec("older_than", f"must not be negative, got {older_than!r}")
    found = inventory(backends, leftovers=True)
    now = time.time()
    failures = dict(found.errors)
    removed: list[SandboxInfo] = []
    for info in found.sandboxes:
        if not has_labels(info, labels or {}):
            continue
        reason = is_garbage(
            info, older_than=older_than, session=session, now=now, include_kept=include_kept
        )
        if reason is None:
            continue
        if not dry_run:
            logger.info("gc: removing %s on %s: %s", info.name, info.backend, reason)
            try:
                with timed("gc remove", backend=info.backend, sandbox=info.name):
                    get_backend(info.backend).remove(info.name, info.labels.get(LAUNCH, ""))
            except SandboxError as exc:
                failures[f"{info.backend}/{info.name}"] = str(exc)
                continue
        removed.append(info)
    if failures:
        raise GcIncomplete(removed, failures)
    return removed
