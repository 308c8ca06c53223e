"""What `volume` and `network` share: the --label option, finding one of ours by name on
whichever engine holds it, and removing several, each failure reported on its own."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from sandboxer import InvalidSpec, SandboxError, SandboxExists

from . import _output


class Named(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def backend(self) -> str: ...


T = TypeVar("T", bound=Named)


def label_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument(
        "-l", "--label", dest="labels", metavar="K=V", action="append", default=[], help=text
    )


def add_ls(verbs: Any, kind: str, handler: Callable[[argparse.Namespace], int]) -> None:
    """`KIND ls`: ours on one engine or all, by label, as a table, JSON or names."""
    ls = verbs.add_parser("ls", help=f"list our {kind}s")
    ls.add_argument("--backend", metavar="B", help="only this engine")
    label_option(ls, f"only {kind}s with this label (repeatable)")
    shown = ls.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="print JSON")
    shown.add_argument("-q", "--quiet", action="store_true", help="print names only")
    ls.set_defaults(handler=handler)


def add_rm(
    verbs: Any, kind: str, unused: str, handler: Callable[[argparse.Namespace], int]
) -> None:
    """`KIND rm NAME...`: only ours, and only while `unused` holds (it says so in help)."""
    rm = verbs.add_parser("rm", help=f"remove {kind}s (ours, {unused})")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.add_argument("--backend", metavar="B", help="the engine holding them")
    rm.set_defaults(handler=handler)


@contextlib.contextmanager
def creating(kind: str, name: str, backend: str) -> Iterator[None]:
    """Errors of creating `kind` `name` in the CLI's words: the name is the NAME argument."""
    try:
        yield
    except InvalidSpec as exc:
        if exc.field != "name":
            raise
        raise InvalidSpec("NAME", exc.message) from None
    except SandboxExists:
        raise SandboxExists(f"{backend} has a {kind} called {name!r} already") from None


def find(
    kind: str,
    name: str,
    backend: str | None,
    get: Callable[[str, str], T],
    ours: Callable[[], Sequence[T]],
) -> T:
    """The `kind` called `name`: on `backend` (ours or not: removing says which), else
    the one of ours on any engine, which must be the only one of that name."""
    if backend is not None:
        return get(name, backend)
    found = [item for item in ours() if item.name == name]
    if len(found) > 1:
        engines = ", ".join(item.backend for item in found)
        raise InvalidSpec("--backend", f"{kind} {name!r} is on {engines}: name the engine")
    if not found:
        raise InvalidSpec("NAME", f"no {kind} of ours is called {name!r}")
    return found[0]


def remove_each(names: Sequence[str], remove: Callable[[str], None]) -> int:
    """`remove` each name, printing the ones removed; any failure makes the exit code."""
    failures = 0
    for name in names:
        try:
            remove(name)
        except SandboxError as exc:
            _output.error(f"{name}: {exc}")
            failures += 1
            continue
        print(name)
    return _output.ENGINE_FAILURE if failures else 0
