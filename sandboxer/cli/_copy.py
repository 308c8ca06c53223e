"""`cp SRC DST`: copy between the host and a sandbox, one side written `NAME:/path`.

As with `docker cp`, a destination that is an existing host directory, or that ends with
`/`, receives the source under its own name. A host path with a `:` before any `/` is
written `./name:with:colons`.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
from typing import Any

import attrs

from sandboxer import InvalidSpec, attach

from . import _output

# NAME:PATH, NAME being a sandbox name, id or id prefix (no `/`, so ./a:b is a host path).
_REMOTE = re.compile(r"^(?P<sandbox>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<path>.*)$")


@attrs.frozen
class Location:
    path: str
    sandbox: str | None = None  # None: on the host


def location(text: str, argument: str) -> Location:
    found = _REMOTE.match(text)
    if found is None:
        if not text:
            raise InvalidSpec(argument, "expected a host path or NAME:/path")
        return Location(text)
    path = found.group("path")
    if not path.startswith("/"):
        raise InvalidSpec(argument, f"the path in the sandbox must be absolute, got {path!r}")
    return Location(path, found.group("sandbox"))


def register(commands: Any) -> None:
    cp = commands.add_parser(
        "cp",
        usage="%(prog)s [--overwrite] SRC DST",
        help="copy files between the host and a sandbox",
        description="Copy a file or directory tree: `cp NAME:/path HOST_PATH` out of a "
        "sandbox, `cp HOST_PATH NAME:/path` into it. An existing host destination is "
        "refused unless --overwrite (then replaced, never entered).",
    )
    cp.add_argument("source", metavar="SRC")
    cp.add_argument("destination", metavar="DST")
    cp.add_argument("--overwrite", action="store_true", help="replace an existing host destination")
    cp.set_defaults(handler=cp_command)


def _into_directory(destination: str, source: str, is_directory: bool) -> str:
    """`destination`, or the source's name inside it when it names a directory."""
    if destination.endswith("/") or is_directory:
        return posixpath.join(destination, posixpath.basename(source.rstrip("/")))
    return destination


def cp_command(args: argparse.Namespace) -> int:
    source = location(args.source, "SRC")
    destination = location(args.destination, "DST")
    # What the host side says is checked here, before any engine is asked for the sandbox.
    if source.sandbox is not None and destination.sandbox is None:
        target = _into_directory(destination.path, source.path, os.path.isdir(destination.path))
        if os.path.lexists(target) and not args.overwrite:
            raise InvalidSpec("DST", f"{target} exists; add --overwrite to replace it")
        with _output.progress(f"copying {args.source}"):
            attach(source.sandbox).copy_out(source.path, target, overwrite=args.overwrite)
    elif destination.sandbox is not None and source.sandbox is None:
        if not os.path.lexists(source.path):
            raise InvalidSpec("SRC", f"does not exist: {source.path}")
        target = _into_directory(destination.path, source.path, False)
        with _output.progress(f"copying {args.source}"):
            attach(destination.sandbox).copy_in(source.path, target)
    else:
        raise InvalidSpec("cp", "one of SRC and DST is NAME:/path, the other a host path")
    return 0
