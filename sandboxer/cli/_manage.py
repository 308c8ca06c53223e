"""`ls`, `rm` and `gc`: our sandboxes on every engine."""

from __future__ import annotations

import argparse
import os
import re
import time
from typing import Any

from sandboxer import (
    GcIncomplete,
    InvalidSpec,
    SandboxError,
    SandboxNotFound,
    attach,
    gc,
    inventory,
)
from sandboxer.ownership import has_labels

from . import _output
from ._spec import pairs

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds in "90", "90s", "15m", "1h" or "2d"."""
    found = _DURATION.match(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 90s, 15m, 1h or 2d, got {text!r}"
        )
    return float(found.group(1)) * _SECONDS[found.group(2)]


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

    sweep = commands.add_parser(
        "gc",
        help="remove leftover sandboxes",
        description="Remove our sandboxes whose owner process on this host has exited and, "
        "with --older-than, those older than that. With a session (--session, or "
        "$SANDBOXER_SESSION when set) only that session's sandboxes go, all of them. "
        "Sandboxes made with `run -d` stay unless --include-kept. "
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


def rm_command(args: argparse.Namespace) -> int:
    found = inventory()
    removed: list[str] = []
    failures: dict[str, str] = {}
    for wanted in args.sandboxes:
        try:
            attach(found.find(wanted)).destroy()
        except SandboxNotFound as exc:
            if not args.force:
                failures[wanted] = str(exc)
            continue
        except InvalidSpec:
            raise  # an ambiguous prefix: a usage error
        except SandboxError as exc:
            failures[wanted] = f"{wanted}: {exc}"
            continue
        removed.append(wanted)
        if not args.json:
            print(wanted)
    if args.json:
        _output.print_json({"removed": removed, "failures": failures})
    for why in failures.values():
        _output.error(why)
    return _output.ENGINE_FAILURE if failures else 0


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
    now = time.time()
    if args.json:
        _output.print_json(
            {
                "dry_run": args.dry_run,
                "removed": [_output.info_dict(info, now) for info in removed],
                "failures": failures,
            }
        )
    else:
        verb = "would remove" if args.dry_run else "removed"
        for info in removed:
            print(f"{verb} {info.backend}/{info.name} ({info.id[:12]})")
        if not removed:
            _output.note("nothing to remove")
    for what, why in failures.items():
        _output.error(f"{what}: {why}")
    return _output.ENGINE_FAILURE if failures else 0
