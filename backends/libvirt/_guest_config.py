"""A launch plan turned into the per-sandbox files the guest init reads (pure: no I/O).

They travel as a small cpio archive appended to the shared initramfs: the kernel unpacks
concatenated archives in order, so these files land on top of the image's own.
"""

from __future__ import annotations

import io
import math
import shlex
from collections.abc import Sequence

import attrs

from sandboxer.backend import InvalidSpec, LaunchPlan
from sandboxer.images import ImageConfig
from sandboxer.images.systemd import boots_systemd

from ._cpio import CpioWriter
from ._guest_scripts import OUTBOUND_NET, SYSTEM_PATHS
from ._network_xml import Member, hosts_lines, member_names

CPU_PERIOD_US = 100_000


@attrs.frozen
class Share:
    """One host directory exported to the guest over virtio-9p."""

    tag: str
    source: str  # the host path QEMU opens
    target: str
    read_only: bool
    # A named volume's name (its source is found by LibvirtVolumes.shares); "": a host path.
    volume: str = ""


def nics(plan: LaunchPlan) -> tuple[bool, bool]:
    """(inbound, outbound): which of the two user-mode networks the guest gets.

    Published ports arrive through a restricted network, from which the guest reaches
    nothing; "bridge" adds an unrestricted one for outbound traffic. Two networks rather
    than one because QEMU maps its gateway address to the host's loopback: the outbound
    one's gateway can then be prohibited in the guest without cutting off the replies of
    forwarded connections, which come from the inbound one's.
    """
    inbound = plan.network == "isolated" or (plan.network == "bridge" and bool(plan.ports))
    return inbound, plan.network == "bridge"


# glibc reads at most three.
MAX_NAMESERVERS = 3


def nameservers(plan: LaunchPlan, members: Sequence[Member]) -> list[str]:
    """The guest's resolvers: each named network's dnsmasq (the first network's first:
    an internal one refuses names it does not hold, so glibc asks the next), then QEMU's
    for outbound traffic."""
    found = [member.gateway for member in members]
    if nics(plan)[1]:
        found.append(f"{OUTBOUND_NET}.3")
    return list(dict.fromkeys(found))[:MAX_NAMESERVERS]


def default_route(plan: LaunchPlan, members: Sequence[Member]) -> str:
    """The gateway of the guest's default route on a named network: the first one with
    a way out, unless QEMU's outbound network ("bridge") is the way out; "" for none."""
    if plan.network == "bridge":
        return ""
    return next((member.gateway for member in members if not member.internal), "")


def _is_system_path(target: str) -> bool:
    top = "/" + target.strip("/").split("/")[0]
    return top in SYSTEM_PATHS or top.startswith("/lib")


def check_mount_targets(plan: LaunchPlan) -> None:
    """InvalidSpec for a mount over the guest's system paths (before anything is made)."""
    for target in [m.target for m in plan.mounts] + [v.target for v in plan.volumes]:
        if _is_system_path(target):
            raise InvalidSpec(
                "Mount.target",
                f"{target} is a system path of the VM guest, which root-run steps "
                f"use ({', '.join(SYSTEM_PATHS)}, /lib*); mount elsewhere, e.g. /data",
            )


def shares(plan: LaunchPlan) -> tuple[Share, ...]:
    return tuple(
        Share(f"sbx{index}", mount.source, mount.target, mount.read_only)
        for index, mount in enumerate(plan.mounts)
    ) + tuple(
        Share(f"sbv{index}", "", volume.target, volume.read_only, volume=volume.name)
        for index, volume in enumerate(plan.volumes)
    )


def _cap_names(caps: tuple[str, ...]) -> list[str]:
    return [cap.lower().removeprefix("cap_") for cap in caps]


def capability_sets(plan: LaunchPlan) -> tuple[str, str]:
    """setpriv arguments: (bounding and inheritable sets, ambient set); empty = untouched."""
    drop, add = plan.cap_drop, _cap_names(plan.cap_add)
    if not drop:
        return "", ""
    if any(cap.upper() == "ALL" for cap in drop):
        keep = "".join(f",+{cap}" for cap in add)
        return "-all" + keep, ("-all" + keep) if add else ""
    return ",".join(f"-{cap}" for cap in _cap_names(drop)), ""


def sandbox_conf(
    plan: LaunchPlan, image: ImageConfig | None = None, members: Sequence[Member] = ()
) -> str:
    """Shell variables for the guest's scripts; `image`: the config of the OCI image the
    guest boots (its User is then the default user); `members`: its named networks."""
    bounding, ambient = capability_sets(plan)
    user = plan.user if image is None else image.effective_user(plan.user)
    inbound, outbound = nics(plan)
    cpu_max = ""
    if plan.cpus is not None:
        cpu_max = f"{math.ceil(plan.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}"
    values = {
        "SBX_HOSTNAME": plan.hostname,
        "SBX_NET_IN": "1" if inbound else "0",
        "SBX_NET_OUT": "1" if outbound else "0",
        "SBX_NICS": "1" if inbound or outbound or members else "0",
        "SBX_ROUTE": default_route(plan, members),
        "SBX_NAMESERVERS": " ".join(nameservers(plan, members)),
        "SBX_MEMORY": str(plan.memory or ""),
        "SBX_PIDS": str(plan.pids or ""),
        "SBX_CPU_MAX": cpu_max,
        "SBX_ROOT_RO": "1" if plan.read_only_root else "0",
        "SBX_SECCOMP": "1" if plan.seccomp is not None else "0",
        "SBX_NNP": "1" if plan.no_new_privileges else "0",
        "SBX_USER": user or "",
        "SBX_IMAGE_DISK": "0" if image is None else "1",
        # The image's systemd is PID 1, and runs stage 2 as a unit (see _systemd).
        "SBX_SYSTEMD": "1" if image is not None and boots_systemd(plan) else "0",
        # Created at boot if the image lacks it, as Docker does.
        "SBX_WORKDIR": "" if image is None else image.working_directory(plan.workdir),
        "SBX_BOUNDING": bounding,
        "SBX_AMBIENT": ambient,
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


# The guest reads these two line by line: `refusals` refused paths with a newline or
# a backslash.
def mounts_file(plan: LaunchPlan) -> str:
    return "".join(
        f"{share.tag} {'ro' if share.read_only else 'rw'} {share.target}\n"
        for share in shares(plan)
    )


def tmpfs_file(plan: LaunchPlan) -> str:
    return "".join(f"{tmpfs.size} {tmpfs.mode:o} {tmpfs.path}\n" for tmpfs in plan.tmpfs)


def networks_file(members: Sequence[Member]) -> str:
    """One line per named network's NIC: its MAC and its static address."""
    return "".join(f"{member.mac} {member.address}\n" for member in members)


def guest_files(
    plan: LaunchPlan,
    seccomp_bpf: bytes,
    image: ImageConfig | None = None,
    members: Sequence[Member] = (),
) -> dict[str, bytes]:
    """Path inside the guest -> content, for everything that differs between sandboxes."""
    names = member_names(plan.name, plan.hostname)
    return {
        "etc/sandboxer/sandbox.conf": sandbox_conf(plan, image, members).encode(),
        "etc/sandboxer/mounts": mounts_file(plan).encode(),
        "etc/sandboxer/tmpfs": tmpfs_file(plan).encode(),
        "etc/sandboxer/seccomp.bpf": seccomp_bpf,
        "etc/sandboxer/networks": networks_file(members).encode(),
        # Appended to /etc/hosts: itself and the peers known now (DNS has later ones).
        "etc/sandboxer/hosts": hosts_lines(members, names).encode(),
    }


def config_archive(files: dict[str, bytes]) -> bytes:
    """The files as a cpio archive to append to the initramfs."""
    buffer = io.BytesIO()
    cpio = CpioWriter(buffer)
    for name, data in files.items():
        cpio.file(name, data, 0o644)
    cpio.close()
    return buffer.getvalue()
