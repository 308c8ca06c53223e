"""The sandboxes this process launched and still owns: destroyed at interpreter exit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from ._log import logger


class Destroyable(Protocol):
    @property
    def name(self) -> str: ...

    def destroy(self) -> None: ...


class LiveSandboxes:
    """A set of sandboxes that any thread may add to or take from."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sandboxes: list[Destroyable] = []  # a list: sandboxes compare by identity

    def add(self, sandbox: Destroyable) -> None:
        with self._lock:
            self._sandboxes.append(sandbox)

    def discard(self, sandbox: Destroyable) -> None:
        """Forget `sandbox` (destroyed, or meant to outlive this process); no error if absent."""
        with self._lock:
            if sandbox in self._sandboxes:
                self._sandboxes.remove(sandbox)

    def __contains__(self, sandbox: object) -> bool:
        with self._lock:
            return sandbox in self._sandboxes

    def __iter__(self) -> Iterator[Destroyable]:
        """The sandboxes here now: a copy, so the loop may add and discard."""
        with self._lock:
            return iter(list(self._sandboxes))

    def destroy_all(self) -> None:
        """Destroy every sandbox still here; one failing does not keep the rest alive."""
        for sandbox in self:
            try:
                sandbox.destroy()
            except Exception:
                logger.exception("could not destroy %s at exit", sandbox.name)
