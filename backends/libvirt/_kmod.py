"""Kernel modules for the guest: found in an unpacked kernel package, put in load order.

There is no modules.dep in a package unpacked with `dpkg-deb -x` (depmod runs at install
time), so dependencies come from each module's own `depends=` string in .modinfo.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from sandboxer.backend import ImageNotFound

_DEPENDS = re.compile(rb"\x00depends=([^\x00]*)\x00")


def _key(name: str) -> str:
    # Module names treat '-' and '_' alike (9pnet_virtio, snd-hda-intel, ...).
    return name.replace("-", "_")


def _index(modules_dir: Path) -> dict[str, Path]:
    return {_key(path.name.removesuffix(".ko")): path for path in modules_dir.rglob("*.ko")}


def depends(module: Path) -> list[str]:
    """The modules `module` needs loaded first, as its .modinfo section names them."""
    match = _DEPENDS.search(b"\x00" + module.read_bytes())
    if match is None or not match.group(1):
        return []
    return [_key(name) for name in match.group(1).decode().split(",") if name]


def load_order(modules_dir: Path, wanted: Iterable[str]) -> list[Path]:
    """`wanted` and everything they depend on, each after its dependencies."""
    index = _index(modules_dir)
    ordered: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        path = index.get(name)
        if path is None:
            needed_by = f" (needed by {chain[-1]})" if chain else ""
            raise ImageNotFound(f"kernel module {name}{needed_by} is not in {modules_dir}")
        for dependency in depends(path):
            visit(dependency, (*chain, name))
        seen.add(name)
        ordered.append(path)

    for name in wanted:
        visit(_key(name), ())
    return ordered
