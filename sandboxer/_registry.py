"""Finds backends: the `sandboxer.backends` entry-point group, plus in-process registrations.

Classes load lazily (a dotted path until first use), instances are created once per
process and shared, so a launch never builds a new engine client.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import importlib.metadata
import threading
from collections.abc import Mapping

from ._backend import Backend
from ._errors import BackendUnavailable
from ._log import logger

ENTRY_POINT_GROUP = "sandboxer.backends"

# What to install when a known backend's SDK is missing.
INSTALL_HINTS: Mapping[str, str] = {
    "docker": "pip install 'docker>=7.0'",
    "incus": "pip install 'pylxd>=2.3.2' 'requests>=2.32.2'",
    "libvirt": "apt-get install libvirt-dev pkg-config && pip install 'libvirt-python>=9.0'",
}

_lock = threading.Lock()
_registered: dict[str, str | type[Backend]] = {}
_instances: dict[str, Backend] = {}


@atexit.register
def _close_all() -> None:
    # Close engine connections while the interpreter is whole: SDK finalizers that run
    # later (libvirt's) fail noisily on a half torn-down interpreter.
    with _lock:
        instances = list(_instances.values())
        _instances.clear()
    for instance in instances:
        try:
            instance.close()
        except Exception:
            logger.debug("closing backend %s failed", instance.name, exc_info=True)


def register_backend(name: str, backend: str | type[Backend], *, replace: bool = False) -> None:
    """Make `backend` (a class or "module:Class") available as `name` in this process."""
    with _lock:
        if name in _known() and not replace:
            raise ValueError(f"backend {name!r} is already registered")
        _registered[name] = backend
        _instances.pop(name, None)


def unregister_backend(name: str) -> None:
    with _lock:
        _registered.pop(name, None)
        instance = _instances.pop(name, None)
    if instance is not None:
        instance.close()


@functools.cache
def _entry_points() -> dict[str, str]:
    # Installed distributions do not change while we run; scanning them costs ~5 ms.
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _known() -> dict[str, str | type[Backend]]:
    return {**_entry_points(), **_registered}


def backend_names() -> list[str]:
    return sorted(_known())


def backend_class(name: str) -> type[Backend]:
    """The class registered as `name`; raises BackendUnavailable if unknown or not importable."""
    target = _known().get(name)
    if target is None:
        raise BackendUnavailable(name, f"no such backend; known: {', '.join(backend_names())}")
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(
            name, f"cannot import {module_name}: {exc}", INSTALL_HINTS.get(name)
        ) from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendUnavailable(name, f"{target} is not a sandboxer Backend class")
    return cls


def get_backend(name: str) -> Backend:
    """The shared instance of backend `name`, created on first use."""
    instance = _instances.get(name)
    if instance is not None:
        return instance
    cls = backend_class(name)
    with _lock:
        if name not in _instances:
            _instances[name] = cls()
        return _instances[name]
