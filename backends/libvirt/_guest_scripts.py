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

import attrs

# Where the guest keeps its modules, one .ko per module, and one load-order list per group.
MODULE_DIR = "lib/modules/sandboxer"
AGENT_CHANNEL = "org.qemu.guest_agent.0"
# The command service's ports: this prefix and 0, 1, ... (see _service).
SERVICE_CHANNEL = "org.sandboxer.exec."
SERVICE_BINARY = "sbx-service"  # on the guest's tools PATH (/sbin, or /.sandboxer/bin)
PROBE_ARGUMENT = "sandboxer.probe"
PROBE_MARKER = "sandboxer-probe: userspace reached"
# The guest's two possible QEMU user-mode networks (/24 each): published ports come in
# through a restricted one, outbound traffic leaves through the other (see _domain).
INBOUND_NET, INBOUND_MAC = "10.0.2", "52:54:00:5b:78:01"
OUTBOUND_NET, OUTBOUND_MAC = "10.0.3", "52:54:00:5b:78:02"
GUEST_ADDRESS = INBOUND_NET + ".15"  # where published ports are forwarded to
# Where the image puts the scripts below.
EXEC_PATH, KILL_PATH, SHUTDOWN_PATH = "/sbin/sbx-exec", "/sbin/sbx-kill", "/sbin/shutdown"
# In the initramfs: what stage 1 copies to /.sandboxer of an OCI image's root.
OCI_DIR = "sbx-oci"
# Files the host hands to one exec (stdin, staged output) live here: root-only tmpfs.
STAGING_DIR = "/run/sandboxer"
# This package as installed (sandboxer.backends.libvirt), which carries guest-scripts/.
_PACKAGE = __name__.rpartition(".")[0]


def read(name: str) -> str:
    """The text of guest-scripts/`name` (package data, installed with the package)."""
    return (resources.files(_PACKAGE) / "guest-scripts" / name).read_text(encoding="utf-8")


_PLACEHOLDER = re.compile(r"@[A-Z][A-Z_]*@")


def fill(template: str, **values: str) -> str:
    """`template` with each @NAME@ replaced by values[NAME]; none may be left unfilled."""
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    left = _PLACEHOLDER.search(template)
    if left is not None:
        raise ValueError(f"guest script placeholder {left.group()} has no value")
    return template


@attrs.frozen
class GuestLayout:
    """Where a guest's root-run steps find sandboxer's own programs and settings.

    The built-in guest has them in its own root. In an OCI image's guest the root is the
    image's: root-run steps never use a program, library or setting of the image there,
    only those under /.sandboxer (read-only), dynamically linked ones through their own
    loader and libraries."""

    tools_path: str  # PATH of the root-run scripts
    conf: str  # the directory of sandbox.conf, mounts, tmpfs, seccomp.bpf
    qemu_ga: str  # command prefixes (split on spaces by the scripts)
    bwrap: str
    setpriv: str
    env: str
    shell: tuple[str, ...]  # what qemu-ga runs the scripts below with; () = their #!
    sh: str  # a shell for commands' own scripts (run as the user)
    rm: str  # the root-run clean-up of staged files
    tar: str  # the file calls' archiver (run as the user)
    exec_path: str
    kill_path: str
    shutdown_path: str

    def values(self) -> dict[str, str]:
        return {
            "TOOLS_PATH": self.tools_path,
            "CONF": self.conf,
            "QEMU_GA": self.qemu_ga,
            "BWRAP": self.bwrap,
            "SETPRIV": self.setpriv,
            "ENV": self.env,
        }

    def command(self, script: str, args: list[str]) -> tuple[str, list[str]]:
        """(path, arguments) for qemu-ga's guest-exec of one of the scripts."""
        argv = [*self.shell, script, *args]
        return argv[0], argv[1:]


BUILTIN = GuestLayout(
    tools_path="/usr/sbin:/usr/bin:/sbin:/bin",
    conf="/etc/sandboxer",
    qemu_ga="/usr/sbin/qemu-ga",
    bwrap="/usr/bin/bwrap",
    setpriv="/usr/bin/setpriv",
    env="/usr/bin/env",
    shell=(),
    sh="/bin/sh",
    rm="/bin/rm",
    tar="tar",
    exec_path=EXEC_PATH,
    kill_path=KILL_PATH,
    shutdown_path=SHUTDOWN_PATH,
)
OCI_ROOT = "/.sandboxer"
# The host's programs and their libraries, run through the loader they were built with.
_LOADER = f"{OCI_ROOT}/lib/ld-linux-x86-64.so.2 --library-path {OCI_ROOT}/lib"
OCI = GuestLayout(
    tools_path=f"{OCI_ROOT}/bin",  # the static busybox and its applets
    conf=f"{OCI_ROOT}/etc",
    qemu_ga=f"{_LOADER} {OCI_ROOT}/libexec/qemu-ga",
    bwrap=f"{_LOADER} {OCI_ROOT}/libexec/bwrap",
    setpriv=f"{_LOADER} {OCI_ROOT}/libexec/setpriv",
    env=f"{_LOADER} {OCI_ROOT}/libexec/env",
    shell=(f"{OCI_ROOT}/bin/sh",),
    sh=f"{OCI_ROOT}/bin/sh",
    rm=f"{OCI_ROOT}/bin/rm",
    # busybox's: an image may have no tar, and GNU tar fails where it cannot set mtimes
    # (9p shares with accessmode=squash), which busybox's leaves be.
    tar=f"{OCI_ROOT}/bin/tar",
    exec_path=f"{OCI_ROOT}/sbx-exec",
    kill_path=f"{OCI_ROOT}/sbx-kill",
    shutdown_path=f"{OCI_ROOT}/sbx-shutdown",
)


# Shared by both guests' set-up (this init, and the cloud-init set-up of a user's disk
# image): the 9p shares and tmpfs mounts from /etc/sandboxer, then the commands' cgroup.
MOUNTS = read("mounts.sh")  # @CONF@: filled by `render`
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
def exec_script(layout: GuestLayout) -> str:
    return fill(read("exec.sh"), **layout.values())


EXEC = exec_script(BUILTIN)

# sbx-kill ID: kill every process one exec started (the whole cgroup, daemons included).
KILL = read("kill.sh")

# qemu-ga's guest-shutdown runs /sbin/shutdown, which busybox lacks: ask the init to stop,
# through a FIFO of its own (systemd has its own /run/initctl, of another protocol).
STOP_FIFO = f"{STAGING_DIR}/initctl"
SHUTDOWN = fill(read("shutdown.sh"), STOP_FIFO=STOP_FIFO)

# systemd owns the cgroup tree and turns off the root cgroup's controllers that no unit
# asks for: the unit that runs the guest agent asks for the three the commands' cgroup
# needs (a disk image's qemu-guest-agent.service, sandboxer/systemd's sandboxer.service).
SYSTEMD_ACCOUNTING = ("CPUAccounting=yes", "MemoryAccounting=yes", "TasksAccounting=yes")
# sandboxer/systemd's unit for sandboxer's stage 2 (see _systemd), written by stage 1.
SYSTEMD_UNIT_NAME = "sandboxer.service"
SYSTEMD_UNIT = fill(
    read(SYSTEMD_UNIT_NAME),
    OCI_SH=OCI.sh,
    OCI_ROOT=OCI_ROOT,
    SYSTEMD_ACCOUNTING="\n".join(SYSTEMD_ACCOUNTING),
)


# The guest's own system paths: root-run steps (init, agent, exec wrapper, setpriv, their
# libraries and settings; a disk image's systemd, cron and cloud-init) read or run what is
# there, so a mount at or above one would hand the sandbox those steps.
SYSTEM_PATHS = (
    "/bin", "/boot", "/dev", "/etc", "/proc", "/root", "/run", "/sbin", "/sys", "/usr", "/var",
)  # fmt: skip
# ... and, as a case pattern for the guest, with /lib*, the OCI guest's own tools and /.
_SYSTEM_PATTERN = "|".join(
    ["/", "/lib*", f"{OCI_ROOT}", f"{OCI_ROOT}/*"]
    + [pattern for path in SYSTEM_PATHS for pattern in (path, f"{path}/*")]
)

# Filled into every script that names them: the shared set-up and the networks.
_SHARED = {
    "MOUNTS": MOUNTS.rstrip("\n"),
    "LIMITS": LIMITS.rstrip("\n"),
    "CHANNELS": CHANNELS.rstrip("\n"),
    "INBOUND_NET": INBOUND_NET,
    "INBOUND_MAC": INBOUND_MAC,
    "OUTBOUND_NET": OUTBOUND_NET,
    "OUTBOUND_MAC": OUTBOUND_MAC,
    "SYSTEM_PATHS": _SYSTEM_PATTERN,  # after MOUNTS, which names it
}


def render(name: str, layout: GuestLayout = BUILTIN, **values: str) -> str:
    """guest-scripts/`name` with its placeholders filled: the shared ones (which may hold
    `layout`'s), `layout`'s paths, then `values`."""
    return fill(read(name), **_SHARED, **layout.values(), **values)


def init_script(layout: GuestLayout = BUILTIN) -> str:
    """PID 1 (guest-scripts/init.sh). Order matters: every mkdir on / happens before / turns
    read-only; qemu-ga starts last, once the guest looks exactly as the sandbox should.
    Stage 1 is the same in both layouts; an OCI image's root runs stage 2 from
    /.sandboxer (`OCI`)."""
    return render(
        "init.sh",
        layout,
        MODULE_DIR=MODULE_DIR,
        OCI_DIR=OCI_DIR,
        AGENT_CHANNEL=AGENT_CHANNEL,
        SERVICE_CHANNEL=SERVICE_CHANNEL,
        PROBE_MARKER=PROBE_MARKER,
        PROBE_ARGUMENT=PROBE_ARGUMENT,
        STOP_FIFO=STOP_FIFO,
        SYSTEMD_UNIT=SYSTEMD_UNIT.rstrip("\n"),
        SYSTEMD_UNIT_NAME=SYSTEMD_UNIT_NAME,
        OCI_SETPRIV=OCI.setpriv,
    )
