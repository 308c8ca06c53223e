"""A launch plan turned into the Incus instance request (pure: no engine calls).

Security controls map to Incus keys where Incus has one and to `raw.lxc` where only
LXC does: capabilities (lxc.cap.keep/drop), no-new-privileges, the tmpfs mounts a
read-only root needs, a start-host hook that raises loopback from the host, so
the sandbox needs no capability for it, mount hooks that make host mounts nosuid,nodev,
and how PID 1 starts (`_boot`).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from sandboxer.backend import (
    EXEC_USER,
    ControlStatus,
    InvalidSpec,
    LaunchPlan,
    PortMapping,
    SeccompPolicy,
    Target,
    host_kernel,
)
from sandboxer.images.systemd import boots_systemd

from ._boot import SYSTEMD_LIFTS, Boot, Init
from ._seccomp import Translation, translate

# LXC runs start-host hooks on the host once the container's namespaces exist, before
# its init: loopback comes up without the sandbox holding CAP_NET_ADMIN.
LOOPBACK_HOOK = (
    "lxc.hook.start-host = /bin/sh -c 'nsenter --net=/proc/$LXC_PID/ns/net ip link set lo up'"
)
# Config keys whose values are line lists: profile extras are appended, not replacing ours.
APPENDED = ("raw.lxc", "raw.seccomp")
# Mount targets a hook line can name without quoting (the line goes through a shell).
SAFE_TARGET = re.compile(r"[A-Za-z0-9_./@%+=:,-]+")
LABEL_PREFIX = "user."
ADDRESS_KEY = "user.sandboxer.address"
# The host name the templates write to /etc/hostname and /etc/hosts.
HOSTNAME_KEY = "user.sandboxer.hostname"
# More /etc/hosts lines (the named networks' members known at create), and the
# /etc/resolv.conf the template writes (their DNS).
HOSTS_KEY = "user.sandboxer.hosts"
RESOLV_KEY = "user.sandboxer.resolv"
ENV_PREFIX = "environment."
WORKDIR_KEY = "user.sandboxer.workdir"
# The names of the variables set to "" (a JSON list): exec adds them, Incus would not.
EMPTY_ENV_KEY = "user.sandboxer.empty-env"
# Where the file calls find their busybox (`Boot.busybox`), for a process that finds it later.
BUSYBOX_KEY = "user.sandboxer.busybox"


@attrs.frozen
class Nic:
    """A network interface of the sandbox, on `network`, with a static address."""

    network: str
    address: str  # "10.213.4.7/16", configured by LXC before init
    gateway: str | None = None  # a default route, only where there is a way out
    reserved: bool = False  # Incus knows the subnet: it reserves and filters the address
    device: str = "eth0"  # the device's and the interface's name
    port_isolation: bool = False  # no traffic to the bridge's other ports


@attrs.frozen
class Named:
    """The sandbox's NICs on named networks, and how it finds their members' names."""

    nics: tuple[Nic, ...] = ()
    hosts: tuple[str, ...] = ()  # "ADDRESS NAME..." lines for /etc/hosts
    nameservers: tuple[str, ...] = ()


NO_NAMED = Named()


def nics_of(nic: Nic | None, named: Named) -> list[Nic]:
    """Every NIC, in the order Incus numbers them for LXC (lxc.net.N): by device name."""
    return sorted([nic, *named.nics] if nic else named.nics, key=lambda n: n.device)


def empty_environment(settings: Mapping[str, str]) -> tuple[str, ...]:
    """The names `own_config` kept under EMPTY_ENV_KEY (none if it is absent or garbled)."""
    try:
        names = json.loads(settings.get(EMPTY_ENV_KEY, "[]"))
    except ValueError:
        return ()
    return tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()


def labels_config(labels: Mapping[str, str]) -> dict[str, str]:
    return {LABEL_PREFIX + key: value for key, value in labels.items()}


def labels_from_config(config: Mapping[str, str]) -> dict[str, str]:
    return {k[len(LABEL_PREFIX) :]: v for k, v in config.items() if k.startswith(LABEL_PREFIX)}


def _capability(name: str) -> str:
    return name.lower().removeprefix("cap_")


def capability_lines(plan: LaunchPlan) -> list[str]:
    drop = {_capability(c) for c in plan.cap_drop}
    add = {_capability(c) for c in plan.cap_add}
    if "all" in drop:
        # keep = none drops every capability, including ones newer than this code.
        return ["lxc.cap.keep = " + (" ".join(sorted(add)) or "none")]
    if drop - add:
        return ["lxc.cap.drop = " + " ".join(sorted(drop - add))]
    return []


def tmpfs_lines(plan: LaunchPlan) -> list[str]:
    return [
        f"lxc.mount.entry = tmpfs {tmpfs.path.strip('/')} tmpfs {tmpfs.options},create=dir 0 0"
        for tmpfs in plan.tmpfs
    ]


def mount_hook_lines(plan: LaunchPlan) -> list[str]:
    """nosuid,nodev on the sandbox side of every host mount. Incus' disk device takes no
    such option for a bind, so a mount hook (run by LXC in the sandbox's mount namespace,
    after every mount entry, before the init) remounts each one."""
    lines = []
    for mount in plan.mounts:
        # check() refuses such targets first; this guards a root shell line on its own.
        if not SAFE_TARGET.fullmatch(mount.target):
            raise InvalidSpec("Mount.target", f"unsafe in an LXC hook: {mount.target!r}")
        options = "remount,bind,nosuid,nodev" + (",ro" if mount.read_only else "")
        lines.append(
            f"lxc.hook.mount = /bin/sh -c 'mount -o {options} \"$LXC_ROOTFS_MOUNT\"{mount.target}'"
        )
    return lines


def raw_lxc(plan: LaunchPlan, nic: Nic | None, boot: Boot, named: Named = NO_NAMED) -> str:
    lines = [LOOPBACK_HOOK, *boot.lines(), *mount_hook_lines(plan)]
    if plan.hostname != plan.name:  # Incus names the UTS namespace after the instance
        lines.append(f"lxc.uts.name = {plan.hostname}")
    if plan.no_new_privileges:
        lines.append("lxc.no_new_privs = 1")
    if not plan.requirements.nested and not boots_systemd(plan):
        lines += capability_lines(plan)
    lines += tmpfs_lines(plan)
    for index, each in enumerate(nics_of(nic, named)):
        # Configured by LXC before init, so no DHCP client (and no capability) is needed.
        broadcast = ipaddress.ip_interface(each.address).network.broadcast_address
        lines.append(f"lxc.net.{index}.ipv4.address = {each.address} {broadcast}")
        if each.gateway:
            lines.append(f"lxc.net.{index}.ipv4.gateway = {each.gateway}")
    return "\n".join(lines)


def seccomp(plan: LaunchPlan) -> Translation | None:
    """The profile's policy as `raw.seccomp`, or None when no policy applies."""
    if plan.seccomp is None or plan.requirements.nested or boots_systemd(plan):
        return None
    # Containers share the host's kernel: its version decides minKernel rules.
    return _translation(plan.seccomp, attrs.evolve(plan.seccomp_target, kernel=host_kernel()))


@functools.lru_cache(maxsize=16)
def _translation(policy: SeccompPolicy, target: Target) -> Translation:
    """Once per policy and target: both the enforcement report and the request need it."""
    return translate(policy.resolve(target))


def limits(plan: LaunchPlan) -> dict[str, str]:
    config: dict[str, str] = {}
    if plan.pids is not None:
        config["limits.processes"] = str(plan.pids)
    if plan.memory is not None:
        config["limits.memory"] = str(plan.memory)
        # No swap on top: the limit is what the sandbox really gets.
        config["limits.memory.swap"] = "false"
    if plan.cpus is not None:
        config["limits.cpu"] = str(math.ceil(plan.cpus))
        if plan.cpus != math.ceil(plan.cpus):
            config["limits.cpu.allowance"] = f"{round(plan.cpus * 100)}ms/100ms"
    return config


def _listen(port: PortMapping) -> str:
    ip = ipaddress.ip_address(port.host_ip)
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"{port.protocol}:{host}:{port.host_port}"


def volume_devices(plan: LaunchPlan, pool: str) -> dict[str, dict[str, str]]:
    """A disk device per named volume: a custom volume of `pool` (made shifted)."""
    return {
        f"volume{index}": {
            "type": "disk",
            "pool": pool,
            "source": volume.name,
            "path": volume.target,
            "readonly": "true" if volume.read_only else "false",
        }
        for index, volume in enumerate(plan.volumes)
    }


def devices(
    plan: LaunchPlan, pool: str, nic: Nic | None, boot: Boot, named: Named = NO_NAMED
) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {
        "root": {
            "type": "disk",
            "path": "/",
            "pool": pool,
            "readonly": "true" if plan.read_only_root else "false",
        },
        **boot.devices(),
    }
    for index, mount in enumerate(plan.mounts):
        found[f"mount{index}"] = {
            "type": "disk",
            "source": mount.source,
            "path": mount.target,
            "readonly": "true" if mount.read_only else "false",
        }
    found.update(volume_devices(plan, pool))
    for index, port in enumerate(plan.ports):
        # bind=host: Incus listens on the host and connects inside the sandbox's
        # network namespace, so this works with no NIC at all.
        found[f"port{index}"] = {
            "type": "proxy",
            "listen": _listen(port),
            "connect": f"{port.protocol}:127.0.0.1:{port.guest_port}",
            "bind": "host",
        }
    for each in nics_of(nic, named):
        device = found[each.device] = {"type": "nic", "network": each.network, "name": each.device}
        if each.reserved:
            # Incus reserves the address and drops what the sandbox sends from another.
            device["ipv4.address"] = each.address.split("/")[0]
            device["security.ipv4_filtering"] = "true"
            device["security.mac_filtering"] = "true"
        if each.port_isolation:
            device["security.port_isolation"] = "true"
    return found


def own_config(
    plan: LaunchPlan, nic: Nic | None, boot: Boot, named: Named = NO_NAMED
) -> dict[str, str]:
    """The keys the profile's controls and the spec set: no extra may override one."""
    # The sandbox's own name maps to its default link's address, else its first network's.
    address = nic.address if nic else (named.nics[0].address if named.nics else None)
    result = {
        **labels_config(plan.labels),
        **{ENV_PREFIX + key: value for key, value in boot.environment.items() if value},
        # What exec defaults to, also for a process that finds the sandbox later.
        WORKDIR_KEY: boot.workdir,
        **limits(plan),
        # The built-in images' /etc/hosts template maps the sandbox's name to this.
        ADDRESS_KEY: address.split("/")[0] if address else "127.0.1.1",
        HOSTNAME_KEY: plan.hostname,
        HOSTS_KEY: "".join(line + "\n" for line in named.hosts),
        RESOLV_KEY: "".join(f"nameserver {server}\n" for server in named.nameservers),
        "security.privileged": "false",
        # No /dev/incus: the guest API socket is a way to talk to the engine.
        "security.guestapi": "false",
        "raw.lxc": raw_lxc(plan, nic, boot, named),
        "security.nesting": "true" if plan.requirements.nested else "false",
    }
    if boot.user is not None:
        result[LABEL_PREFIX + EXEC_USER] = boot.user
    if boot.empty_environment:
        result[EMPTY_ENV_KEY] = json.dumps(boot.empty_environment)
    if boot.busybox is not None:
        result[BUSYBOX_KEY] = boot.busybox
    if plan.isolated_ids:
        result["security.idmap.isolated"] = "true"
    return result


def config(
    plan: LaunchPlan, nic: Nic | None, boot: Boot, named: Named = NO_NAMED
) -> dict[str, str]:
    result = own_config(plan, nic, boot, named)
    rules = seccomp(plan)
    if rules is not None:
        result["raw.seccomp"] = rules.policy
    # `refusals` has refused every extra that would override one of these keys.
    for key, value in plan.extras.get("incus", {}).items():
        result[key] = result[key] + "\n" + value if key in APPENDED and key in result else value
    return result


def instance_request(
    plan: LaunchPlan,
    fingerprint: str,
    pool: str,
    nic: Nic | None,
    start: bool,
    boot: Boot,
    named: Named = NO_NAMED,
) -> dict[str, Any]:
    """The POST /1.0/instances body; no profiles, so nothing unreviewed is inherited."""
    return {
        "name": plan.name,
        "type": "container",
        "source": {"type": "image", "fingerprint": fingerprint},
        "profiles": [],
        "config": config(plan, nic, boot, named),
        "devices": devices(plan, pool, nic, boot, named),
        "start": start,
    }


_NESTING = (
    "not applied: Requirements(nested=True) needs the {} this control would take away "
    "(nested containers mount, unshare and map ids)"
)
_TAKEN = {"capabilities": "capabilities", "seccomp": "syscalls"}
_NETWORKS = {
    "isolated": "per the spec, network 'isolated' (overriding the profile's 'none'): a "
    "private bridge with no host address, no DHCP and no NAT: no route out",
    "bridge": "per the spec, network 'bridge' (overriding the profile's 'none'): the shared "
    "NAT bridge, needed for what the spec asked (ports or network='bridge'); its ports are "
    "isolated, so sandboxes on it cannot reach each other",
}
_NAMED = (
    "per the spec, named networks {}: an Incus bridge each, with a static, filtered "
    "address; its members reach each other by name (its DNS), nothing else joins it; an "
    "internal one has no NAT and its DNS answers only its members' names"
)


_OWN_INIT = (
    "not applied to PID 1: image {!r} boots its own init, which runs as the container's "
    "root (an unprivileged host uid), and so do the services it starts; only exec runs "
    "as the profile's uid:gid"
)


def enforcement_overrides(plan: LaunchPlan, init: Init) -> dict[str, ControlStatus]:
    """Where this plan departs from the backend's static `controls`, and why."""
    overrides: dict[str, ControlStatus] = {}
    if plan.user is not None and init is Init.OWN:
        overrides["non_root_user"] = ControlStatus(False, _OWN_INIT.format(plan.image))
    links = [_NETWORKS[plan.network]] if plan.network != "none" else []
    if plan.networks:
        links.append(_NAMED.format(", ".join(plan.networks)))
    if links:
        overrides["network"] = ControlStatus(True, "; and ".join(links))
    if plan.requirements.nested:
        for control in ("capabilities", "seccomp"):
            overrides[control] = ControlStatus(False, _NESTING.format(_TAKEN[control]))
        return overrides
    if boots_systemd(plan):
        overrides.update(
            (control, ControlStatus(False, reason)) for control, reason in SYSTEMD_LIFTS.items()
        )
        return overrides
    translation = seccomp(plan)
    if translation is not None and translation.problems:
        overrides["seccomp"] = ControlStatus(
            False, "Incus cannot express: " + "; ".join(translation.problems)
        )
    return overrides
