"""What completion scripts are generated from: the parser's commands, options and the
kind of value each takes. Dynamic kinds (`@sandboxes`, ...) are looked up when completing.
"""

from __future__ import annotations

import argparse

# What a value of these destinations is; each script completes each kind its own way.
DYNAMIC = {
    "backend": "@backends",
    "backends": "@backends",
    "network": "@network_modes",  # run --network: a mode or a network's name
    "networks": "@networks",
    "profile": "@profiles",
    "reference": "@images",
    "references": "@images",
    "sandbox": "@sandboxes",
    "sandboxes": "@sandboxes",
}
FILES = "@files"


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def value_kind(action: argparse.Action) -> str:
    """Its choices (space separated), a dynamic kind, or FILES."""
    return " ".join(map(str, action.choices or ())) or DYNAMIC.get(action.dest, FILES)


def is_completed_positional(action: argparse.Action) -> bool:
    """A positional the scripts complete (not a subcommand, not a command's words)."""
    return (
        not action.option_strings
        and not isinstance(action, argparse._SubParsersAction)
        and action.nargs != argparse.REMAINDER
        and action.help != argparse.SUPPRESS
    )
