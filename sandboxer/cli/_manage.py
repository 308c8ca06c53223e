"""`ls`, `rm`, `stop`, `start` and `gc`: our sandboxes on every engine."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from sandboxer import (
    GcIncomplete,
    InvalidSpec,
    Network,
    Sandbox,
    SandboxError,
    SandboxNotFound,
    Volume,
    attach,
    backend_names,
    gc,
    gc_networks,
    gc_volumes,
    inventory,
    probe_all,
)
from sandboxer.ownership import has_labels

from . import _output
from ._duration import duration
from ._spec import pairs


def _label_filter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-l",
        "--label",
        dest="labels",
        metavar="K=V",
        action="append",
        default=[],
        help="only sandboxes with this label (repeatable)",
    )


def register(commands: Any) -> None:
    ls = commands.add_parser("ls", help="list our sandboxes on every available engine")
    ls.add_argument("--backend", action="append", metavar="B", help="only this engine (repeatable)")
    _label_filter(ls)
    shown = ls.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print JSON")
    shown.add_argument("-q", "--quiet", action="store_true", help="print names only")
    ls.set_defaults(handler=ls_command)

    rm = commands.add_parser("rm", help="remove sandboxes by name, id or id prefix")
    rm.add_argument("sandboxes", nargs="+", metavar="ID_OR_NAME")
    rm.add_argument("-f", "--force", action="store_true", help="no error for missing sandboxes")
    rm.add_argument(
        "--json", action="store_true", help='print {"removed": [...], "failures": {NAME: why}}'
    )
    rm.set_defaults(handler=rm_command)

    stop = commands.add_parser(
        "stop",
        help="stop sandboxes (they stay until rm; start runs them again)",
        description="Stop sandboxes gracefully, killing them after --time seconds. What "
        "a stopped sandbox keeps differs per engine (docs/backends.md).",
    )
    stop.add_argument("sandboxes", nargs="+", metavar="ID_OR_NAME")
    stop.add_argument(
        "-t",
        "--time",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait before killing (default: 10)",
    )
    stop.add_argument(
        "--json", action="store_true", help='print {"stopped": [...], "failures": {NAME: why}}'
    )
    stop.set_defaults(handler=stop_command)

    start = commands.add_parser(
        "start",
        help="start stopped sandboxes again",
        description="Start stopped sandboxes again, under the profile, limits, mounts and "
        "ports they were launched with.",
    )
    start.add_argument("sandboxes", nargs="+", metavar="ID_OR_NAME")
    start.add_argument(
        "--json", action="store_true", help='print {"started": [...], "failures": {NAME: why}}'
    )
    start.set_defaults(handler=start_command)

    sweep = commands.add_parser(
        "gc",
        help="remove leftover sandboxes, networks and volumes",
        description="Remove our sandboxes whose max_lifetime has ended (kept or not, in "
        "any session), those whose owner process on this host has exited and, "
        "with --older-than, those older than that. With a session (--session, or "
        "$SANDBOXER_SESSION when set) only that session's sandboxes go, all of them. "
        "Sandboxes made with `run -d` stay unless --include-kept. Then networks no "
        "sandbox is on whose owner process has exited go (not those made with "
        "`network create`), and ephemeral volumes likewise. "
        "Nothing without sandboxer's labels is ever touched.",
    )
    sweep.add_argument(
        "--older-than",
        type=duration,
        metavar="AGE",
        help="also remove sandboxes older than AGE (90s, 15m, 1h, 2d)",
    )
    sessions = sweep.add_mutually_exclusive_group()
    sessions.add_argument("--session", metavar="ID", help="only this session's sandboxes")
    sessions.add_argument(
        "--all-sessions",
        action="store_true",
        help="ignore $SANDBOXER_SESSION and sweep every session",
    )
    sweep.add_argument(
        "--backend", action="append", metavar="B", help="only this engine (repeatable)"
    )
    _label_filter(sweep)
    sweep.add_argument(
        "--include-kept", action="store_true", help="also sandboxes made with `run -d`"
    )
    sweep.add_argument(
        "--volumes",
        action="store_true",
        help="also remove every volume of ours no sandbox mounts (ephemeral ones whose "
        "owner has exited always go)",
    )
    sweep.add_argument("-n", "--dry-run", action="store_true", help="only show what would go")
    sweep.add_argument("--json", action="store_true", help="print JSON")
    sweep.set_defaults(handler=gc_command)


def ls_command(args: argparse.Namespace) -> int:
    wanted = pairs(args.labels, "--label")
    with _output.progress("listing sandboxes"):
        found = inventory(args.backend)
    shown = [info for info in found.sandboxes if has_labels(info, wanted)]
    now = time.time()
    if args.json:
        _output.print_json([_output.info_dict(info, now) for info in shown])
    elif args.quiet:
        for info in shown:
            print(info.name)
    else:
        rows = [_output.info_row(info, now) for info in shown]
        print(_output.table(_output.INFO_HEADERS, rows))
    for name, why in found.errors.items():
        _output.error(f"{name}: {why}")
    return _output.ENGINE_FAILURE if found.errors else 0


def _each(
    args: argparse.Namespace, verb: str, action: Callable[[Sandbox], None], force: bool = False
) -> int:
    """`action` on each sandbox named in args.sandboxes; print the names it succeeded on
    (or, with --json, {verb: [...], "failures": {...}}); with `force`, a missing one is
    no failure."""
    found = inventory()
    done: list[str] = []
    failures: dict[str, str] = {}
    for wanted in args.sandboxes:
        try:
            action(attach(found.find(wanted)))
        except SandboxNotFound as exc:
            if not force:
                failures[wanted] = str(exc)
            continue
        except InvalidSpec:
            raise  # an ambiguous prefix or a bad argument: a usage error
        except SandboxError as exc:
            failures[wanted] = f"{wanted}: {exc}"
            continue
        done.append(wanted)
        if not args.json:
            print(wanted)
    if args.json:
        _output.print_json({verb: done, "failures": failures})
    for why in failures.values():
        _output.error(why)
    return _output.ENGINE_FAILURE if failures else 0


def rm_command(args: argparse.Namespace) -> int:
    return _each(args, "removed", Sandbox.destroy, force=args.force)


def stop_command(args: argparse.Namespace) -> int:
    if not args.time >= 0:
        raise InvalidSpec("--time", f"must be zero or more seconds, got {args.time:g}")
    return _each(args, "stopped", lambda sandbox: sandbox.stop(args.time))


def start_command(args: argparse.Namespace) -> int:
    return _each(args, "started", Sandbox.start)


def gc_command(args: argparse.Namespace) -> int:
    session = args.session
    if session is None and not args.all_sessions and os.environ.get("SANDBOXER_SESSION"):
        session = os.environ["SANDBOXER_SESSION"]
        _output.note(f"only session {session} (from $SANDBOXER_SESSION; --all-sessions for all)")
    wanted = pairs(args.labels, "--label")
    failures: dict[str, str] = {}
    with _output.progress("collecting garbage"):
        try:
            removed = gc(
                args.older_than,
                session,
                dry_run=args.dry_run,
                backends=args.backend,
                labels=wanted,
                include_kept=args.include_kept,
            )
        except GcIncomplete as exc:
            removed, failures = exc.removed, exc.failures
        networks = _gc_networks(args, failures)
        volumes = _gc_volumes(args, failures)
    now = time.time()
    if args.json:
        _output.print_json(
            {
                "dry_run": args.dry_run,
                "removed": [_output.info_dict(info, now) for info in removed],
                "networks": [{"backend": n.backend, "name": n.name} for n in networks],
                "volumes": [{"backend": v.backend, "name": v.name} for v in volumes],
                "failures": failures,
            }
        )
    else:
        verb = "would remove" if args.dry_run else "removed"
        for info in removed:
            print(f"{verb} {info.backend}/{info.name} ({info.id[:12]})")
        for network in networks:
            print(f"{verb} network {network.backend}/{network.name}")
        for volume in volumes:
            print(f"{verb} volume {volume.backend}/{volume.name}")
        if not removed and not networks and not volumes:
            _output.note("nothing to remove")
    for what, why in failures.items():
        _output.error(f"{what}: {why}")
    return _output.ENGINE_FAILURE if failures else 0


def _gc_networks(args: argparse.Namespace, failures: dict[str, str]) -> list[Network]:
    """Networks gc removes, engine by engine: one engine failing spares no other's."""
    engines = args.backend or [
        name for name, state in probe_all(backend_names()).items() if state.available
    ]
    removed: list[Network] = []
    for engine in engines:
        try:
            removed += gc_networks(backends=[engine], dry_run=args.dry_run)
        except SandboxError as exc:
            failures[f"networks on {engine}"] = str(exc)
    return removed


def _gc_volumes(args: argparse.Namespace, failures: dict[str, str]) -> list[Volume]:
    """Volumes gc removes (all of ours unused with --volumes); failures noted per engine."""
    try:
        return gc_volumes(all_unused=args.volumes, backends=args.backend, dry_run=args.dry_run)
    except SandboxError as exc:
        failures["volumes"] = str(exc)
        return []
