"""`network create|ls|rm`: named networks of ours, whose members reach each other by
sandbox name (`run --network NAME`)."""

from __future__ import annotations

import argparse
from typing import Any

from sandboxer import Network, SandboxError, SandboxSpec, select

from . import _output
from ._named import add_ls, add_rm, creating, find, label_option, remove_each
from ._spec import pairs

_HEADERS = ("BACKEND", "NAME", "INTERNAL", "SUBNET", "KEPT", "USERS")


def register(commands: Any) -> None:
    network = commands.add_parser(
        "network",
        help="create, list and remove named networks",
        description="Sandboxes on one named network (`run --network NAME`) reach each "
        "other by sandbox name, and nothing else does; a network lives on one engine. "
        "Only sandboxer's own networks are listed or removed.",
    )
    verbs = network.add_subparsers(dest="verb", metavar="VERB", required=True)

    create = verbs.add_parser(
        "create",
        help="create a network (kept until `network rm`)",
        description="Create a network and print its name. It stays until `network rm`, "
        "also after this command has exited.",
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("--backend", metavar="B", help="the engine (default: the one `run` picks)")
    create.add_argument(
        "--internal", action="store_true", help="no route out: members reach each other only"
    )
    create.add_argument(
        "--subnet", metavar="CIDR", help="a private IPv4 /16-/28 (default: a free /24)"
    )
    label_option(create, "label the network (repeatable)")
    create.set_defaults(handler=create_command)

    add_ls(verbs, "network", ls_command)
    add_rm(verbs, "network", "with no sandbox on them", rm_command)


def create_command(args: argparse.Namespace) -> int:
    backend = args.backend or select(SandboxSpec()).backend
    with creating("network", args.name, backend):
        network = Network.create(
            args.name,
            backend=backend,
            internal=args.internal,
            subnet=args.subnet,
            labels=pairs(args.labels, "--label"),
            keep=True,
        )
    print(network.name)
    return 0


def _users(network: Network) -> list[str] | None:
    """The sandboxes on `network`; None when its engine cannot say."""
    try:
        return network.users()
    except SandboxError:
        return None


def ls_command(args: argparse.Namespace) -> int:
    with _output.progress("listing networks"):
        found = Network.list(args.backend, pairs(args.labels, "--label"))
        users = {(n.backend, n.name): _users(n) for n in found if not args.quiet}
    if args.json:
        _output.print_json(
            [
                {
                    "backend": n.backend,
                    "name": n.name,
                    "internal": n.internal,
                    "subnet": n.subnet,
                    "kept": n.kept,
                    "users": users[n.backend, n.name],
                    "labels": dict(n.labels),
                }
                for n in found
            ]
        )
    elif args.quiet:
        for network in found:
            print(network.name)
    else:
        rows = []
        for n in found:
            on = users[n.backend, n.name]
            shown = "?" if on is None else ",".join(on)
            rows.append(
                [
                    n.backend,
                    n.name,
                    "yes" if n.internal else "",
                    n.subnet,
                    "yes" if n.kept else "",
                    shown,
                ]
            )
        print(_output.table(_HEADERS, rows))
    return 0


def rm_command(args: argparse.Namespace) -> int:
    def remove(name: str) -> None:
        find("network", name, args.backend, Network.get, Network.list).remove()

    return remove_each(args.names, remove)
