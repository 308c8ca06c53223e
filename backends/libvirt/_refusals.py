"""What in a plan a VM cannot honour: refused by `check`, before the run directory, the
initrd or the domain is made, never from inside `create`."""

from __future__ import annotations

import ipaddress

from sandboxer.backend import LaunchPlan
from sandboxer.images.disk import is_disk_image
from sandboxer.images.systemd import command_refusal


def refusals(plan: LaunchPlan) -> list[str]:
    found = [
        f"QEMU user networking forwards IPv4 host addresses only, not {port.host_ip}"
        for port in plan.ports
        if ipaddress.ip_address(port.host_ip).version != 4
    ]
    # The guest reads its mount and tmpfs lists line by line with `read`.
    paths = [("Mount.target", m.target) for m in plan.mounts]
    paths += [("Mount.target", v.target) for v in plan.volumes]
    paths += [("profile tmpfs", tmpfs.path) for tmpfs in plan.tmpfs]
    found += [
        f"{field} cannot hold a newline or backslash on VMs: {path!r}"
        for field, path in paths
        if "\n" in path or "\\" in path
    ]
    found += command_refusal(plan)
    if is_disk_image(plan.image) and plan.read_only_root:
        # A disk image's agent unit names the writable paths, double-quoted.
        found += [
            f"{field} cannot hold a double quote on VM disk images: {path!r}"
            for field, path in paths
            if '"' in path
        ]
    return found
