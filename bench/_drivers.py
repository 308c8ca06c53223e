"""The two sides of every measurement: sandboxer, and the same work by hand on the raw SDK.

A driver launches one hardened sandbox ready for exec, runs a command, moves a file in
and out, and destroys it. Raw drivers (one module per engine) hold one SDK client for
the whole run, as a careful user would, and never import sandboxer's adapters.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import sandboxer

IMAGE = "sandboxer/minimal"


class Driver(Protocol):
    def launch(self) -> Any: ...

    def exec(self, box: Any, argv: list[str]) -> bytes:
        """The command's stdout; raises if it exits non-zero."""

    def write(self, box: Any, path: str, data: bytes) -> None: ...

    def read(self, box: Any, path: str) -> bytes: ...

    def destroy(self, box: Any) -> None: ...

    def close(self) -> None: ...

    def version(self) -> str:
        """The engine's version, for the report."""


class SandboxerDriver:
    """sandboxer's public API with its defaults: the hardened profile, selection included."""

    def __init__(self, backend: str, image: str = IMAGE) -> None:
        self.backend = backend
        self.image = image

    def launch(self) -> sandboxer.Sandbox:
        return sandboxer.launch(image=self.image, backend=self.backend)

    def exec(self, box: sandboxer.Sandbox, argv: list[str]) -> bytes:
        result = box.exec(argv)
        if result.exit_code != 0:
            raise RuntimeError(f"{argv} exited {result.exit_code}: {result.stderr!r}")
        return result.stdout

    def write(self, box: sandboxer.Sandbox, path: str, data: bytes) -> None:
        box.write_file(path, data)

    def read(self, box: sandboxer.Sandbox, path: str) -> bytes:
        return box.read_file(path)

    def destroy(self, box: sandboxer.Sandbox) -> None:
        box.destroy()

    def close(self) -> None:
        pass

    def version(self) -> str:
        return f"sandboxer {sandboxer.__version__}"


def raw_driver(backend: str, **options: Any) -> Driver:
    """The by-hand driver for `backend` (bench/_raw_<backend>.py), with its `options`."""
    module = importlib.import_module(f"_raw_{backend}")
    driver: Driver = module.RawDriver(**options)
    return driver
