"""`volume create|ls|rm`: named volumes of ours on every engine."""

from __future__ import annotations

import argparse
from typing import Any

from sandboxer import SandboxSpec, Volume, select

from . import _output
from ._named import add_ls, add_rm, creating, find, label_option, remove_each
from ._spec import pairs

_HEADERS = ("BACKEND", "NAME", "EPHEMERAL")


def register(commands: Any) -> None:
    volume = commands.add_parser(
        "volume",
        help="create, list and remove named volumes",
        description="Named volumes outlive the sandboxes that mount them "
        "(`run -v NAME:/path`); only sandboxer's own are listed or removed.",
    )
    verbs = volume.add_subparsers(dest="verb", metavar="VERB", required=True)

    create = verbs.add_parser("create", help="create a volume")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--backend", metavar="B", help="the engine (default: the one `run` picks)")
    label_option(create, "label the volume (repeatable)")
    create.add_argument(
        "--ephemeral", action="store_true", help="gc removes it once this command has exited"
    )
    create.set_defaults(handler=create_command)

    add_ls(verbs, "volume", ls_command)
    add_rm(verbs, "volume", "mounted by no sandbox", rm_command)


def create_command(args: argparse.Namespace) -> int:
    backend = args.backend or select(SandboxSpec()).backend
    labels = pairs(args.labels, "--label")
    with creating("volume", args.name, backend):
        volume = Volume.create(args.name, backend=backend, labels=labels, ephemeral=args.ephemeral)
    print(volume.name)
    return 0


def ls_command(args: argparse.Namespace) -> int:
    with _output.progress("listing volumes"):
        found = Volume.list(args.backend, pairs(args.labels, "--label"))
    if args.json:
        _output.print_json(
            [{"backend": v.backend, "name": v.name, "labels": dict(v.labels)} for v in found]
        )
    elif args.quiet:
        for volume in found:
            print(volume.name)
    else:
        rows = [[v.backend, v.name, "yes" if v.ephemeral else ""] for v in found]
        print(_output.table(_HEADERS, rows))
    return 0


def rm_command(args: argparse.Namespace) -> int:
    def remove(name: str) -> None:
        find("volume", name, args.backend, Volume.get, Volume.list).remove()

    return remove_each(args.names, remove)
