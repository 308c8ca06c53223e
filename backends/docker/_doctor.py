"""Docker's checks for `sandboxer doctor`: engine installed, socket reachable and
permitted, daemon answering, and the kernel features the hardened profile relies on.

Each failing check carries the command that fixes it, and the doctor column it answers
(installed / reachable / permission); "ready:" checks count only for "can run now".
"""

from __future__ import annotations

import grp
import os
import shutil
from typing import Any

from sandboxer.backend import Backend, Check, CheckColumn

from ._endpoint import socket_path
from ._runtimes import describe
from ._sdk import docker

_INSTALL = "apt-get install -y docker.io"
_TIMEOUT_SECONDS = 2
_DEFAULT_SOCKET = "/var/run/docker.sock"


def _start_command(path: str | None) -> str:
    """How to start the daemon that should answer on `path` (None: a remote DOCKER_HOST)."""
    if path is None:
        return "start the Docker daemon DOCKER_HOST points to, or unset DOCKER_HOST"
    if path == _DEFAULT_SOCKET and os.path.isdir("/run/systemd/system"):
        return "systemctl start docker"
    listen = "" if path == _DEFAULT_SOCKET else f" -H unix://{path}"
    return f"nohup dockerd{listen} >/var/log/dockerd.log 2>&1 &"  # no init system (CI, containers)


def _socket_checks(path: str) -> list[Check]:
    """Installed, socket present, socket usable by this user: the local engine's basics."""
    dockerd = shutil.which("dockerd")
    if not os.path.exists(path):
        return [
            Check(
                "installed: dockerd",
                bool(dockerd),
                dockerd or "dockerd not found",
                _INSTALL,
                column=CheckColumn.INSTALLED,
            ),
            Check(
                "reachable: docker socket",
                False,
                f"no socket at {path}",
                _start_command(path),
                column=CheckColumn.REACHABLE,
            ),
        ]
    checks = [Check("reachable: docker socket", True, path, column=CheckColumn.REACHABLE)]
    if not os.access(path, os.R_OK | os.W_OK):
        group = grp.getgrgid(os.stat(path).st_gid).gr_name
        checks.append(
            Check(
                "permission: docker socket",
                False,
                f"{path} is not writable by uid {os.getuid()} (group {group})",
                f"sudo usermod -aG {group} $(id -un) && newgrp {group}",
                column=CheckColumn.PERMISSION,
            )
        )
    else:
        permitted = f"uid {os.getuid()} may use it"
        checks.append(
            Check("permission: docker socket", True, permitted, column=CheckColumn.PERMISSION)
        )
    return checks


def _daemon_checks(path: str | None) -> list[Check]:
    """Ask the daemon itself: version, and the features the hardened profile depends on."""
    try:
        client = docker.from_env(timeout=_TIMEOUT_SECONDS)
        try:
            version: dict[str, Any] = client.version()
            info: dict[str, Any] = client.info()
        finally:
            client.close()
    except Exception as exc:
        fix = _start_command(path)
        return [
            Check("reachable: dockerd answers", False, str(exc), fix, column=CheckColumn.REACHABLE)
        ]
    seccomp = any("seccomp" in option for option in info.get("SecurityOptions") or [])
    limits = [key for key in ("MemoryLimit", "PidsLimit") if not info.get(key)]
    return [
        Check(
            "reachable: dockerd answers",
            True,
            f"Docker {version.get('Version')}, API {version.get('ApiVersion')}",
            column=CheckColumn.REACHABLE,
        ),
        Check(
            "ready: seccomp",
            seccomp,
            "seccomp filtering available"
            if seccomp
            else "dockerd has no seccomp support: the hardened profile cannot be enforced",
            None if seccomp else f"{_INSTALL} (a dockerd built with seccomp)",
        ),
        Check(
            "ready: cgroup limits",
            not limits,
            f"{info.get('CgroupDriver')} driver, cgroup v{info.get('CgroupVersion', '1')}"
            if not limits
            else f"dockerd reports no {' or '.join(limits)} support: profile limits fail",
        ),
        # What `runtime=` can choose from (crun: scripts/setup-engines.sh registers it).
        Check("runtimes", True, describe(info)),
    ]


def diagnose(cls: type[Backend]) -> list[Check]:
    """DockerBackend.diagnose: every check, stopping where the next would only repeat it."""
    path = socket_path()
    checks = [] if path is None else _socket_checks(path)  # remote DOCKER_HOST: daemon only
    if all(check.ok for check in checks):
        checks += _daemon_checks(path)
    return checks
