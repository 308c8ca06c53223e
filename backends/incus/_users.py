"""Who exec and PID 1 run as on Incus: the core's account rules (one copy for every
engine), under the name this adapter's modules and tests use."""

from __future__ import annotations

from sandboxer.images.accounts import Identity, is_numeric, resolve

__all__ = ["Identity", "is_numeric", "resolve"]
