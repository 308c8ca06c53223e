"""A launch plan turned into docker `containers.create` arguments (no engine calls; the
helper's directory is made on the host the first time an idle OCI image needs it)."""

from __future__ import annotations

import secrets
from typing import Any

from sandboxer.backend import PREFIX, LaunchPlan
from sandboxer.images import is_builtin
from sandboxer.images.helper import MOUNT_POINT, helper_dir

from ._images import ReadyImage
from ._sdk import docker
from ._volumes import volume_mounts

# The main process of a sandbox that runs nothing of its own: docker-init (tini, PID 1)
# reaps and forwards signals, and a long sleep keeps the container up for exec.
KEEPALIVE = ("sleep", "2147483647")
# Where the file calls find their busybox in this container (`DockerBackend.busybox`).
BUSYBOX_LABEL = PREFIX + "busybox"
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


def _idles(plan: LaunchPlan, image: ReadyImage) -> bool:
    return image.config.main_process(plan.command, plan.entrypoint) is None


def helper_mount_point() -> str:
    """Where an idle sandbox gets the helper: a fresh name, which no image can hold. runc
    follows an image's symlink at a mount point (/.sandboxer -> /etc: over its /etc)."""
    return f"{MOUNT_POINT}-{secrets.token_hex(8)}"


def idle(helper: str) -> tuple[str, ...]:
    """KEEPALIVE for an image that may hold no `sleep`: the helper's static busybox."""
    return (f"{helper}/busybox", *KEEPALIVE)


def main_process(plan: LaunchPlan, image: ReadyImage, helper: str) -> dict[str, list[str]]:
    """`entrypoint` and `command`: the main process under Docker's rules (the same as
    `ImageConfig.main_process`), or an idle one when those leave nothing to run."""
    if _idles(plan, image):
        # [""] clears an Entrypoint the image may have (the spec's `entrypoint=()`).
        return {"entrypoint": [""], "command": list(KEEPALIVE if image.builtin else idle(helper))}
    # Docker merges the image's Entrypoint and Cmd in itself, by the same rules.
    arguments = {}
    if plan.entrypoint is not None:
        arguments["entrypoint"] = list(plan.entrypoint) or [""]
    if plan.command is not None:
        arguments["command"] = list(plan.command)
    return arguments


def helper_mounts(plan: LaunchPlan, image: ReadyImage, helper: str) -> list[docker.types.Mount]:
    """sandboxer's helper at `helper`, read-only, unless the image is a busybox built-in:
    its busybox runs an idle sandbox's `sleep` and the file calls' applets, where the
    image may have neither (or tools of its own making)."""
    if _busybox_tree(plan, image):
        return []
    return [docker.types.Mount(helper, str(helper_dir()), type="bind", read_only=True)]


def _busybox_tree(plan: LaunchPlan, image: ReadyImage) -> bool:
    return image.builtin and is_builtin(plan.image)


def busybox(plan: LaunchPlan, image: ReadyImage, helper: str) -> str:
    return "/bin/busybox" if _busybox_tree(plan, image) else f"{helper}/busybox"


def aliases(plan: LaunchPlan) -> list[str]:
    """The names a sandbox answers to on its named networks: its name alone, unique on
    the engine (a host name may be any peer's name, and would take it over)."""
    return [plan.name]


def first_link(plan: LaunchPlan) -> str | None:
    """The named network a sandbox on named networks only is created on (Docker takes
    no network_mode none beside other networks; the rest join before start)."""
    return plan.networks[0] if plan.network == "none" and plan.networks else None


def joined_later(plan: LaunchPlan) -> tuple[str, ...]:
    """The named networks connected between create and start."""
    return plan.networks[1:] if first_link(plan) else plan.networks


def create_arguments(
    plan: LaunchPlan, image: ReadyImage, network: str | None, *, runtime: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for `DockerClient.containers.create` that honour every plan field;
    `runtime` is dockerd's name for the plan's OCI runtime (None: dockerd's default).

    Env, WorkingDir and User the plan leaves unset are the image's: Docker applies them."""
    helper = helper_mount_point()
    arguments: dict[str, Any] = {
        "image": image.reference,
        **main_process(plan, image, helper),
        "name": plan.name,
        "hostname": plan.hostname,
        "labels": {**plan.labels, BUSYBOX_LABEL: busybox(plan, image, helper)},
        "environment": dict(plan.env),
        "working_dir": plan.workdir,
        "user": plan.user or "",
        "init": True,
        "detach": True,
        "runtime": runtime,
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
        + volume_mounts(plan)
        + helper_mounts(plan, image, helper)
        or None,
        "ports": {f"{p.guest_port}/{p.protocol}": (p.host_ip, p.host_port) for p in plan.ports}
        or None,
        "network_mode": "none" if plan.network == "none" and not plan.networks else None,
        "network": network,
        "networking_config": {network: {"Aliases": aliases(plan)}}
        if network is not None and network in plan.networks
        else None,
        "pids_limit": plan.pids,
        "mem_limit": plan.memory,
        # Same as the memory limit: no swap, so the limit is what the sandbox really gets.
        "memswap_limit": plan.memory,
        "nano_cpus": int(plan.cpus * 1e9) if plan.cpus else None,
        # A sandbox that prints without end must not fill the host's disk.
        "log_config": LOG_CONFIG,
    }
    return {key: value for key, value in arguments.items() if value is not None}
