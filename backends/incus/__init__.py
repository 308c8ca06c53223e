"""Incus / LXC backend: system containers (an init as PID 1) through Incus' REST API."""

from ._backend import IncusBackend

__all__ = ["IncusBackend"]
