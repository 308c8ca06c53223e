"""`sandboxer/systemd` with the image's systemd as PID 1 (pure: no I/O).

Stage 1 of the guest init mounts the image as for any OCI image, then writes the unit
below into the root's tmpfs overlay (the image stays untouched), enables it and
switch_roots to the image's /sbin/init, under no_new_privs when the profile asks for it.
systemd starts the unit early; it runs stage 2 of sandboxer's init from /.sandboxer
(network, mounts, the commands' cgroup, read-only root, qemu-ga), so exec, the file
calls, ports, mounts and limits work as on every other image.
"""

from __future__ import annotations

from collections.abc import Mapping

from sandboxer.backend import ControlStatus

# systemd and the services it starts run as root with every capability and no seccomp
# filter, as on any machine it boots; commands (exec, the file calls) still run under
# all of the profile's controls.
_COMMANDS_STILL = "every command and the file calls still {}"
SYSTEMD_CONTROLS: Mapping[str, ControlStatus] = {
    "capabilities": ControlStatus(
        False,
        "not applied: systemd as PID 1 and the services it starts keep every capability "
        "in the guest (it mounts, and starts services as their users); "
        + _COMMANDS_STILL.format("have their capability sets dropped (setpriv)"),
    ),
    "seccomp": ControlStatus(
        False,
        "not applied: systemd as PID 1 mounts file systems and sets up namespaces for its "
        "services, which the profile's allowlist denies, so it and its services run "
        "unfiltered; " + _COMMANDS_STILL.format("inherit the filter from the guest agent"),
    ),
    **{
        control: ControlStatus(
            False,
            "not applied to services: those systemd as PID 1 starts run in its own slices, "
            "outside the commands' cgroup, bounded only by the VM's RAM and vCPUs; "
            + _COMMANDS_STILL.format("count against it (the commands' cgroup)"),
        )
        for control in ("pids_limit", "memory_limit", "cpu_limit")
    },
    "non_root_user": ControlStatus(
        False,
        "not applied: systemd as PID 1 and the services it starts run as root in the "
        "guest; " + _COMMANDS_STILL.format("run as the profile's uid:gid (setpriv)"),
    ),
}
