"""The shell scripts inside the VM guest: its init, the exec wrapper, the kill helper.

They run under busybox sh. Per-sandbox settings reach them through files the host appends
to the initramfs (see `_guest_config`): /etc/sandboxer/sandbox.conf (shell variables),
/etc/sandboxer/mounts, /etc/sandboxer/tmpfs and /etc/sandboxer/seccomp.bpf.

The scripts themselves are package data in guest-scripts/ (linted there: shellcheck, ruff;
a directory name that is no Python identifier, so setuptools takes it for data, not a
package); the @NAME@ placeholders in them are filled here, by `render`.
"""

from __future__ import annotations

import re
from importlib import resources

# Where the guest keeps its modules, one .ko per module, and one load-order list per group.
MODULE_DIR = "lib/modules/sandboxer"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
PROBE_ARGUMENT = "sandboxer.probe"
PROBE_MARKER = "sandboxer-probe: userspace reached"
# The guest's two possible QEMU user-mode networks (/24 each): published ports come in
# through a restricted one, outbound traffic leaves through the other (see _domain).
INBOUND_NET, INBOUND_MAC = "10.0.2", "52:54:00:5b:78:01"
OUTBOUND_NET, OUTBOUND_MAC = "10.0.3", "52:54:00:5b:78:02"
GUEST_ADDRESS = INBOUND_NET + ".15"  # where published ports are forwarded to
# Where the image puts the scripts below.
EXEC_PATH, KILL_PATH, SHUTDOWN_PATH = "/sbin/sbx-exec", "/sbin/sbx-kill", "/sbin/shutdown"
# Files the host hands to one exec (stdin, staged output) live here: root-only tmpfs.
STAGING_DIR = "/run/sandboxer"
# This package as installed (sandboxer.backends.libvirt), which carries guest-scripts/.
_PACKAGE = __name__.rpartition(".")[0]


def read(name: str) -> str:
    """The text of guest-scripts/`name` (package data, installed with the package)."""
    return (resources.files(_PACKAGE) / "guest-scripts" / name).read_text(encoding="utf-8")


# Shared by both guests' set-up (this init, and the cloud-init set-up of a user's disk
# image): the 9p shares and tmpfs mounts from /etc/sandboxer, then the commands' cgroup.
MOUNTS = read("mounts.sh")
# Limits apply to everything exec starts (each exec gets a child cgroup of "sandbox");
# the agent stays outside them so that a fork bomb or a memory hog cannot silence it.
LIMITS = read("limits.sh")

# Host channels are root's alone: a command that opened one would speak to the host as
# the agent. devtmpfs and udev make virtio ports 0600 root (also those added later);
# this holds it for the ports there whatever an image's rules say.
CHANNELS = read("channels.sh")

# guest-exec runs this as root, with the fixed environment `_exec.WRAPPER_ENV`:
#   sbx-exec ID WORKDIR USER STDIN STDOUT STDERR -- NAME=VALUE... ARGV...
# (empty = the default; STDIN and the outputs are files opened here, before dropping root;
# STDIN "-" keeps what qemu-ga feeds in, "" is /dev/null). The caller's environment is
# data here: nothing the caller passes reaches a process while uid or euid is 0 (no
# LD_PRELOAD for the dynamically linked setpriv, no PATH for the lookups). The wrapper
# joins the limited cgroup and sets up stdio; setpriv drops to the user (uid/gid,
# no_new_privs, capability sets); only then does coreutils' `env -i` enter the working
# directory, apply the caller's variables and exec the command.
EXEC = read("exec.sh")

# sbx-kill ID: kill every process one exec started (the whole cgroup, daemons included).
KILL = read("kill.sh")

# qemu-ga's guest-shutdown runs /sbin/shutdown, which busybox lacks: ask PID 1 to stop.
SHUTDOWN = read("shutdown.sh")


# Filled into every script that names them: the shared set-up and the networks.
_SHARED = {
    "MOUNTS": MOUNTS.rstrip("\n"),
    "LIMITS": LIMITS.rstrip("\n"),
    "CHANNELS": CHANNELS.rstrip("\n"),
    "INBOUND_NET": INBOUND_NET,
    "INBOUND_MAC": INBOUND_MAC,
    "OUTBOUND_NET": OUTBOUND_NET,
    "OUTBOUND_MAC": OUTBOUND_MAC,
}
_PLACEHOLDER = re.compile(r"@[A-Z][A-Z_]*@")


def fill(template: str, **values: str) -> str:
    """`template` with each @NAME@ replaced by values[NAME]; none may be left unfilled."""
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    left = _PLACEHOLDER.search(template)
    if left is not None:
        raise ValueError(f"guest script placeholder {left.group()} has no value")
    return template


def render(name: str, **values: str) -> str:
    """guest-scripts/`name` with its placeholders filled: the shared ones, then `values`."""
    return fill(read(name), **_SHARED, **values)


def init_script() -> str:
    """PID 1 (guest-scripts/init.sh). Order matters: every mkdir on / happens before / turns
    read-only; qemu-ga starts last, once the guest looks exactly as the sandbox should."""
    return render(
        "init.sh",
        MODULE_DIR=MODULE_DIR,
        AGENT_CHANNEL=AGENT_CHANNEL,
        PROBE_MARKER=PROBE_MARKER,
        PROBE_ARGUMENT=PROBE_ARGUMENT,
    )
