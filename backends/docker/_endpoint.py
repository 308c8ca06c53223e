"""Where the Docker daemon listens, as DOCKER_HOST says (the SDK's default otherwise)."""

from __future__ import annotations

import os


def socket_path() -> str | None:
    """The daemon's unix socket; None when DOCKER_HOST names a remote (tcp, ssh) daemon."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return host.removeprefix("unix://") if host.startswith("unix://") else None
