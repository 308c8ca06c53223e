"""Adapters and the CLI use the core only through its public names.

Every module under `backends/` and `sandboxer/cli/` is parsed, and every import, absolute
or relative, is resolved to the module it names as installed (`backends/` is installed
as `sandboxer.backends`). A private part (`_name`) outside the importing module's own
package is an error: adapters import the core from `sandboxer.backend`, the CLI from
`sandboxer` and its public submodules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package it is installed as.
PACKAGES = {ROOT / "sandboxer" / "cli": "sandboxer.cli", ROOT / "backends": "sandboxer.backends"}


def _module_name(path: Path, folder: Path, package: str) -> str:
    parts = path.relative_to(folder).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """Each module (or module attribute) `node` imports, as an absolute dotted name."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        anchor = here[: len(here) - (node.level - 1)]
        base = ".".join([*anchor, *([base] if base else [])])
    yield from (f"{base}.{alias.name}" for alias in node.names)


def _private_part(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


def private_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The private names of the core (or of another package) that `source` imports."""
    parts = module.split(".")
    own = ".".join(parts[:3] if parts[1] == "backends" else parts[:2])  # its own package
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found += [
                name
                for name in _imported(node, module, is_package)
                if name.startswith("sandboxer.")
                and not name.startswith(own + ".")
                and _private_part(name.removeprefix("sandboxer."))
            ]
    return found


def _modules() -> Iterator[tuple[Path, str]]:
    for folder, package in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            yield path, _module_name(path, folder, package)


@pytest.mark.parametrize(
    ("source", "module", "bad"),
    [
        ("from sandboxer._backend import Backend", "sandboxer.backends.docker._b", True),
        ("import sandboxer._labels", "sandboxer.backends.docker._b", True),
        ("from sandboxer import _models", "sandboxer.cli._spec", True),
        ("from .. import _models", "sandboxer.cli._spec", True),
        ("from .._errors import InvalidSpec", "sandboxer.cli._spec", True),
        ("from ... import _log", "sandboxer.backends.incus._x", True),
        ("from ..docker._sdk import docker", "sandboxer.backends.incus._x", True),
        ("from sandboxer.backend import Backend", "sandboxer.backends.docker._b", False),
        ("from ._sdk import docker", "sandboxer.backends.docker._b", False),
        ("from . import _output", "sandboxer.cli._run", False),
        ("from . import _run", "sandboxer.cli", False),
        ("from .. import __version__", "sandboxer.cli._x", False),
        ("from sandboxer.images import is_builtin", "sandboxer.backends.libvirt._b", False),
    ],
)
def test_the_checker_resolves_every_form_of_import(source: str, module: str, bad: bool) -> None:
    is_package = module == "sandboxer.cli"
    assert bool(private_imports(source, module, is_package)) is bad


def test_adapters_and_the_cli_import_only_public_core_names() -> None:
    checked = 0
    offenders = {}
    for path, module in _modules():
        found = private_imports(path.read_text(), module, path.name == "__init__.py")
        if found:
            offenders[str(path.relative_to(ROOT))] = found
        checked += 1
    assert checked > 40  # every adapter and CLI module, not an empty glob
    assert offenders == {}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in `graph` (module -> modules it imports), or [] if none."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        for imported in sorted(graph[module]):
            if found := visit(imported, [*path, module]):
                return found
        done.add(module)
        return []

    return next((found for module in sorted(graph) if (found := visit(module, []))), [])


def test_no_adapter_module_imports_itself_back() -> None:
    folder = ROOT / "backends"
    modules = {
        _module_name(path, folder, "sandboxer.backends"): path for path in folder.rglob("*.py")
    }
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in _imported(node, module, path.name == "__init__.py"):
                    # The module a name lives in: the longest known prefix of it.
                    owner = max(
                        (m for m in modules if f"{name}.".startswith(f"{m}.")),
                        key=len,
                        default=None,
                    )
                    if owner is not None and owner != module:
                        graph[module].add(owner)
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # the search finds one
    assert _cycle(graph) == []
