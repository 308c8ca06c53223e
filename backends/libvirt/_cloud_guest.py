"""The NoCloud seed that makes a user's own cloud image a sandbox (pure: no I/O).

cloud-init reads three files from a volume labelled "cidata": meta-data (instance id and
hostname), network-config (the static addresses QEMU's user-mode networks expect) and
user-data. Our user-data writes the files the built-in guest carries in its initramfs
(/etc/sandboxer, the exec wrapper, the kill helper), a systemd drop-in that runs qemu-ga,
and so every command, under the profile's controls, and a set-up script that runcmd runs
last. The script's /run/sandboxer/ready tells the host the guest is ready for exec; its
/run/sandboxer/failed says why it is not.

cloud-config and network-config are YAML, and JSON is YAML: the standard library writes
them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence

from sandboxer.backend import ControlStatus, LaunchPlan

from ._guest_config import default_route, guest_files, nameservers, nics, shares
from ._guest_scripts import (
    AGENT_CHANNEL,
    EXEC,
    EXEC_PATH,
    GUEST_ADDRESS,
    INBOUND_MAC,
    KILL,
    KILL_PATH,
    OUTBOUND_MAC,
    OUTBOUND_NET,
    STAGING_DIR,
    read,
    render,
)
from ._network_xml import Member

SETUP_PATH = "/usr/local/sbin/sbx-setup"
AGENT_INIT_PATH = "/usr/local/sbin/sbx-agent-init"
AGENT_DROP_IN = "/etc/systemd/system/qemu-guest-agent.service.d/sandboxer.conf"
READY_FILE = f"{STAGING_DIR}/ready"
FAILED_FILE = f"{STAGING_DIR}/failed"
AGENT_STATE_DIR = "/run/qga"
SANDBOX_UID = 1000

# PID 1 of the agent's PID namespace (unshare starts it there): loads the profile's
# compiled seccomp filter, if any (no_new_privs first), starts the agent, which inherits
# the filter and passes it to every command, and reaps the orphans commands leave behind,
# which would otherwise stay zombies and hold the sandbox's pids limit. Cloud images have
# python3 for cloud-init, and no init or seccomp loader of their own for this.
AGENT_INIT = read("agent-init.py")

# The controls whose mechanism differs on a user's disk image; the others are the
# built-in guest's (the backend's capabilities).
DISK_IMAGE_CONTROLS: Mapping[str, ControlStatus] = {
    "no_new_privileges": ControlStatus(
        True,
        "guest: NoNewPrivileges= on qemu-guest-agent.service, inherited by every command "
        "(and setpriv --nnp)",
    ),
    "seccomp": ControlStatus(
        True,
        "guest: the profile's allowlist (default deny) compiled to BPF (libseccomp) and "
        "loaded on the guest agent, inherited by every command; host: QEMU runs under its "
        "own seccomp sandbox",
    ),
    # Not every process: the image's own init must run as root.
    "non_root_user": ControlStatus(
        False,
        "the image's own init (systemd), its services and cloud-init run as root in the "
        "guest; every command, the spec's command and the file calls' tar run as the "
        "profile's uid:gid (setpriv; the caller's environment applies only after the drop)",
    ),
    "read_only_root": ControlStatus(
        True,
        "guest: ProtectSystem=strict on qemu-guest-agent.service: every command sees the "
        "file system read-only but for the profile's tmpfs paths and read-write mounts",
    ),
}


def setup_script() -> str:
    """guest-scripts/cloud-setup.sh: runcmd runs it as root once cloud-init has written the files;
    every boot is a first boot (the overlay is new), so it runs once per sandbox."""
    return render(
        "cloud-setup.sh",
        STAGING_DIR=STAGING_DIR,
        AGENT_STATE_DIR=AGENT_STATE_DIR,
        READY_FILE=READY_FILE,
        FAILED_FILE=FAILED_FILE,
    )


def _unit_path(path: str) -> str:
    """`path` quoted for a systemd unit file ('%' starts a specifier there); `refusals`
    refused paths with a double quote."""
    return '"' + path.replace("%", "%%") + '"'


def agent_drop_in(plan: LaunchPlan) -> str:
    """The qemu-guest-agent.service drop-in that puts the agent under the profile."""
    agent = f"/usr/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/{AGENT_CHANNEL}"
    init = f"/usr/bin/python3 {AGENT_INIT_PATH}"
    if plan.seccomp is not None:
        init += " --seccomp /etc/sandboxer/seccomp.bpf"
    # Commands see their own processes only, as in the built-in guest.
    command = f"/usr/bin/unshare --pid --fork --mount-proc {init} -- {agent} -t {AGENT_STATE_DIR}"
    # systemd owns the root cgroup's controllers and turns off those no unit asks for:
    # the agent asks for the three the commands' cgroup needs.
    accounting = ["CPUAccounting=yes", "MemoryAccounting=yes", "TasksAccounting=yes"]
    lines = ["[Service]", "ExecStart=", f"ExecStart={command}", *accounting]
    if plan.no_new_privileges or plan.seccomp is not None:
        lines.append("NoNewPrivileges=yes")
    if plan.read_only_root:
        writable = [STAGING_DIR, AGENT_STATE_DIR, *(tmpfs.path for tmpfs in plan.tmpfs)]
        writable += [share.target for share in shares(plan) if not share.read_only]
        lines.append("ProtectSystem=strict")
        lines += [f"ReadWritePaths={_unit_path(path)}" for path in writable]
    return "\n".join(lines) + "\n"


def _write_file(path: str, content: bytes, permissions: str) -> dict[str, str]:
    return {
        "path": path,
        "encoding": "b64",
        "content": base64.b64encode(content).decode(),
        "permissions": permissions,
        "owner": "root:root",
    }


def user_data(plan: LaunchPlan, seccomp_bpf: bytes, members: Sequence[Member] = ()) -> str:
    files = [
        _write_file("/" + path, content, "0644")
        for path, content in guest_files(plan, seccomp_bpf, members=members).items()
    ]
    files += [
        _write_file(EXEC_PATH, EXEC.encode(), "0755"),
        _write_file(KILL_PATH, KILL.encode(), "0755"),
        _write_file(SETUP_PATH, setup_script().encode(), "0755"),
        _write_file(AGENT_INIT_PATH, AGENT_INIT.encode(), "0755"),
        _write_file(AGENT_DROP_IN, agent_drop_in(plan).encode(), "0644"),
    ]
    config = {
        # Instead of the image's default user (with sudo): the profile's user, uid 1000,
        # as in the built-in images. An image that has a uid 1000 already keeps its own.
        "users": [{"name": "sandbox", "uid": SANDBOX_UID, "shell": "/bin/sh", "lock_passwd": True}],
        "disable_root": True,
        "ssh_pwauth": False,
        "write_files": files,
        "runcmd": [[SETUP_PATH]],
    }
    return "#cloud-config\n" + json.dumps(config, indent=1) + "\n"


def meta_data(plan: LaunchPlan) -> str:
    return json.dumps({"instance-id": plan.name, "local-hostname": plan.hostname}) + "\n"


def network_config(plan: LaunchPlan, members: Sequence[Member] = ()) -> str:
    """Static addresses on the NICs the domain has (see `_guest_config.nics`, and the
    named networks' `members`): no DHCP wait."""
    inbound, outbound = nics(plan)
    ethernets: dict[str, dict[str, object]] = {}
    route = default_route(plan, members)
    for index, member in enumerate(members):
        ethernets[f"sbxnet{index}"] = {
            "match": {"macaddress": member.mac},
            "set-name": f"sbxnet{index}",
            "addresses": [str(member.address)],
            **({"gateway4": route} if route == member.gateway else {}),
        }
    if inbound:
        ethernets["sbxin"] = {
            "match": {"macaddress": INBOUND_MAC},
            "set-name": "sbxin",
            "addresses": [f"{GUEST_ADDRESS}/24"],
        }
    if outbound:
        ethernets["sbxout"] = {
            "match": {"macaddress": OUTBOUND_MAC},
            "set-name": "sbxout",
            "addresses": [f"{OUTBOUND_NET}.15/24"],
            "gateway4": f"{OUTBOUND_NET}.2",
        }
    servers = nameservers(plan, members)
    if servers:
        # Set per NIC: on the one with the default route (systemd-resolved asks the DNS
        # servers of such links for any name), else on the first named network's.
        routed = [nic for nic in ethernets.values() if "gateway4" in nic]
        (routed or list(ethernets.values()))[0]["nameservers"] = {"addresses": servers}
    return json.dumps({"version": 2, "ethernets": ethernets}, indent=1) + "\n"


def seed_files(
    plan: LaunchPlan, seccomp_bpf: bytes, members: Sequence[Member] = ()
) -> dict[str, bytes]:
    """File name -> content of the NoCloud seed volume."""
    return {
        "meta-data": meta_data(plan).encode(),
        "user-data": user_data(plan, seccomp_bpf, members).encode(),
        "network-config": network_config(plan, members).encode(),
    }
