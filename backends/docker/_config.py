"""A launch plan turned into docker `containers.create` arguments (pure: no engine calls)."""

from __future__ import annotations

from typing import Any

from sandboxer.backend import LaunchPlan

from ._sdk import docker

# PID 1 when the spec gives no command: docker-init (tini) reaps and forwards signals,
# and a long sleep keeps the container up for exec.
KEEPALIVE = ("sleep", "2147483647")
LOG_CONFIG = docker.types.LogConfig(type="json-file", config={"max-size": "10m", "max-file": "2"})


def security_options(plan: LaunchPlan) -> list[str]:
    options = []
    if plan.no_new_privileges:
        options.append("no-new-privileges:true")
    if plan.seccomp is not None:
        # The API takes the policy itself (serialized once per policy); Docker evaluates
        # its includes/excludes against the container's own capabilities.
        options.append("seccomp=" + plan.seccomp.oci_json())
    return options


def tmpfs_mounts(plan: LaunchPlan) -> dict[str, str]:
    return {tmpfs.path: tmpfs.options for tmpfs in plan.tmpfs}


def create_arguments(plan: LaunchPlan, image: str, network: str | None) -> dict[str, Any]:
    """Keyword arguments for `DockerClient.containers.create` that honour every plan field."""
    arguments: dict[str, Any] = {
        "image": image,
        "command": list(plan.command or KEEPALIVE),
        "name": plan.name,
        "hostname": plan.name,
        "labels": dict(plan.labels),
        "environment": dict(plan.env),
        "working_dir": plan.workdir,
        "user": plan.user or "",
        "init": True,
        "detach": True,
        "cap_drop": list(plan.cap_drop) or None,
        "cap_add": list(plan.cap_add) or None,
        "security_opt": security_options(plan) or None,
        "read_only": plan.read_only_root,
        "tmpfs": tmpfs_mounts(plan) or None,
        # Mount objects, not `volumes`: a bind source gone missing fails the launch instead
        # of being silently created on the host as an empty root-owned directory.
        "mounts": [
            docker.types.Mount(m.target, m.source, type="bind", read_only=m.read_only)
            for m in plan.mounts
        ]
        or None,
        "ports": {f"{p.guest_port}/{p.protocol}": (p.host_ip, p.host_port) for p in plan.ports}
        or None,
        "network_mode": "none" if plan.network == "none" else None,
        "network": network,
        "pids_limit": plan.pids,
        "mem_limit": plan.memory,
        # Same as the memory limit: no swap, so the limit is what the sandbox really gets.
        "memswap_limit": plan.memory,
        "nano_cpus": int(plan.cpus * 1e9) if plan.cpus else None,
        # A sandbox that prints without end must not fill the host's disk.
        "log_config": LOG_CONFIG,
    }
    return {key: value for key, value in arguments.items() if value is not None}
