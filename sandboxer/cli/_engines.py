"""`select` (which engine would run this, and why) and `doctor` (is every engine healthy)."""

from __future__ import annotations

import argparse
from typing import Any

from sandboxer import select

from . import _output, _spec


def register(commands: Any) -> None:
    choose = commands.add_parser(
        "select",
        parents=[_spec.selection_options()],
        help="show which engine `run` would use, and why",
        description="Print the backend the selector picks for these flags (the same ones "
        "`run` takes); --explain adds the reason for every decision.",
    )
    shown = choose.add_mutually_exclusive_group()
    shown.add_argument("--explain", action="store_true", help="the reasons and the rejections")
    shown.add_argument("--json", action="store_true", help="print JSON")
    choose.set_defaults(handler=select_command)

    doctor = commands.add_parser(
        "doctor",
        help="check every engine and say how to fix what is broken",
        description="Check the engines (all, or the named ones). Exit code 0 only when "
        "everything checked is healthy.",
    )
    doctor.add_argument("backends", nargs="*", metavar="BACKEND")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(handler=doctor_command)


def select_command(args: argparse.Namespace) -> int:
    with _output.progress("probing engines"):
        selection = select(_spec.spec_from(args))
    if args.json:
        _output.print_json(
            {
                "backend": selection.backend,
                "reasons": list(selection.reasons),
                "candidates": list(selection.candidates),
                "rejected": dict(selection.rejected),
            }
        )
    elif args.explain:
        print(selection.explain())
    else:
        print(selection.backend)
    return 0


def doctor_command(args: argparse.Namespace) -> int:
    from sandboxer.doctor import diagnose  # only this command needs it

    with _output.progress("checking engines"):
        report = diagnose(args.backends or None)
    if args.json:
        _output.print_json(report.to_dict())
    else:
        print(report.render())
    return 0 if report.ok else 1
