"""The shell scripts inside the VM guest: its init, the exec wrapper, the kill helper.

They run under busybox sh. Per-sandbox settings reach them through files the host appends
to the initramfs (see `_guest_config`): /etc/sandboxer/sandbox.conf (shell variables),
/etc/sandboxer/mounts, /etc/sandboxer/tmpfs and /etc/sandboxer/seccomp.bpf.
"""

from __future__ import annotations

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

# Shared by both guests' set-up (this init, and the cloud-init set-up of a user's disk
# image): the 9p shares and tmpfs mounts from /etc/sandboxer, then the commands' cgroup.
MOUNTS = r"""while read -r tag mode target; do
    mkdir -p "$target"
    mount -t 9p -o "$mode,nosuid,nodev,trans=virtio,version=9p2000.L,msize=262144,cache=none" \
        "$tag" "$target" || log "mounting $tag on $target failed"
done < /etc/sandboxer/mounts
while read -r size target; do
    mkdir -p "$target"
    mount -t tmpfs -o "size=$size,mode=1777,nosuid,nodev" tmpfs "$target"
done < /etc/sandboxer/tmpfs
"""
# Limits apply to everything exec starts (each exec gets a child cgroup of "sandbox");
# the agent stays outside them so that a fork bomb or a memory hog cannot silence it.
LIMITS = r"""echo "+pids +memory +cpu" > /sys/fs/cgroup/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/sandbox
[ -n "$SBX_PIDS" ] && echo "$SBX_PIDS" > /sys/fs/cgroup/sandbox/pids.max
if [ -n "$SBX_MEMORY" ]; then
    echo "$SBX_MEMORY" > /sys/fs/cgroup/sandbox/memory.max
    echo 0 > /sys/fs/cgroup/sandbox/memory.swap.max
fi
[ -n "$SBX_CPU_MAX" ] && echo "$SBX_CPU_MAX" > /sys/fs/cgroup/sandbox/cpu.max
"""

# Host channels are root's alone: a command that opened one would speak to the host as
# the agent. devtmpfs and udev make virtio ports 0600 root (also those added later);
# this holds it for the ports there whatever an image's rules say.
CHANNELS = r"""for p in /sys/class/virtio-ports/*; do
    [ -e "$p" ] && chown 0:0 "/dev/${p##*/}" && chmod 600 "/dev/${p##*/}"
done
"""

# PID 1. Order matters: every mkdir on / happens before / turns read-only; qemu-ga starts
# last, once the guest looks exactly as the sandbox should.
INIT = r"""#!/bin/sh
# sandboxer VM guest init (PID 1).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
log() { echo "sandboxer-init: $*" >/dev/console; }
if [ ! -e /.sandboxer-root ]; then
    # Stage 1, in the initramfs. The kernel's rootfs can never be pivoted away from, and
    # bwrap pivots, so the root moves to a tmpfs and this script starts again from there.
    mount -t proc proc /proc
    # The KVM check boots this guest with @PROBE_ARGUMENT@: getting here is all it needs.
    if grep -qw @PROBE_ARGUMENT@ /proc/cmdline; then
        echo "@PROBE_MARKER@" >/dev/console
        reboot -f
    fi
    umount /proc
    mount -t tmpfs -o mode=755 guestroot /mnt
    for entry in /*; do
        case $entry in
            /mnt|/proc|/sys) mkdir "/mnt$entry" ;;
            *) cp -a "$entry" /mnt/ ;;
        esac
    done
    : > /mnt/.sandboxer-root
    exec switch_root /mnt /init
fi
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
mkdir -m 700 /run/sandboxer /run/qga
mkfifo -m 600 /run/initctl
. /etc/sandboxer/sandbox.conf

load() {  # load a module group in the order the host listed it
    while read -r module; do
        [ -d "/sys/module/$module" ] && continue
        insmod "/@MODULE_DIR@/$module.ko" || log "insmod $module failed"
    done < "/@MODULE_DIR@/$1.list"
}
load agent

hostname "$SBX_HOSTNAME"
ip link set lo up
# QEMU user-mode networks with fixed addresses, so no DHCP round trip at boot. In each,
# .2 is QEMU's own address, which leads to the host's loopback.
nic() {  # nic MAC NETWORK: the NIC with that MAC at NETWORK.15/24
    for device in /sys/class/net/*; do
        [ "$(cat "$device/address")" = "$1" ] || continue
        ip link set "${device##*/}" up
        ip addr add "$2.15/24" dev "${device##*/}"
    done
}
[ "$SBX_NET_IN" = 1 ] || [ "$SBX_NET_OUT" = 1 ] && load net
address=127.0.1.1
if [ "$SBX_NET_OUT" = 1 ]; then
    # Outbound traffic, NATed by QEMU. Its .2 would reach host-local services: that one
    # address is prohibited (changing routes needs CAP_NET_ADMIN, which commands lack).
    nic @OUTBOUND_MAC@ @OUTBOUND_NET@
    ip route add default via @OUTBOUND_NET@.2
    ip route add prohibit @OUTBOUND_NET@.2/32
    echo "nameserver @OUTBOUND_NET@.3" > /etc/resolv.conf
    address=@OUTBOUND_NET@.15
fi
if [ "$SBX_NET_IN" = 1 ]; then
    # Published ports come in here, from .2; QEMU (restrict=on) lets nothing else through.
    nic @INBOUND_MAC@ @INBOUND_NET@
    address=@INBOUND_NET@.15
fi
echo "$address $SBX_HOSTNAME" >> /etc/hosts

[ -s /etc/sandboxer/mounts ] && load 9p
@MOUNTS@
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
mkdir /sys/fs/cgroup/agent
@LIMITS@

[ "$SBX_ROOT_RO" = 1 ] && mount -o remount,ro /

@CHANNELS@
port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = "@AGENT_CHANNEL@" ] && port="/dev/${p##*/}"
done
[ -n "$port" ] || log "no guest agent channel found"
# The agent, and so every command, lives in a PID namespace of its own: commands see
# their own processes, not init or the kernel's threads.
agent="/usr/sbin/qemu-ga -m virtio-serial -p $port -t /run/qga -f /run/qga/pid"
if [ "$SBX_SECCOMP" = 1 ]; then
    # bwrap also loads the profile's filter and sets no_new_privs on the agent; both are
    # inherited by every process the agent starts.
    agent="/usr/bin/bwrap --unshare-pid --dev-bind / / --proc /proc --seccomp 9 -- $agent"
else
    [ "$SBX_NNP" = 1 ] && agent="/usr/bin/setpriv --nnp -- $agent"
    agent="unshare -p -f --mount-proc $agent"
fi
(
    while :; do
        sh -c 'echo $$ > /sys/fs/cgroup/agent/cgroup.procs && exec "$@"' agent $agent \
            9< /etc/sandboxer/seccomp.bpf
        log "guest agent exited ($?), restarting"
        sleep 1
    done
) &
log "ready"

# /sbin/shutdown (what qemu-ga runs for guest-shutdown) cannot signal PID 1 from the
# agent's PID namespace; it writes to this FIFO instead.
( read -r _ < /run/initctl; kill -TERM 1 ) &

# QEMU runs with -no-reboot (on_reboot=destroy): rebooting is how the guest powers off.
stop() {
    kill -TERM -1 2>/dev/null
    sleep 1
    kill -KILL -1 2>/dev/null
    sync
    reboot -f
}
trap stop TERM USR2
# `wait` returns on every signal and every reaped orphan; the loop keeps PID 1 alive.
while :; do
    sleep 2147483647 &
    wait
done
"""

# guest-exec runs this as root, with the fixed environment `_exec.WRAPPER_ENV`:
#   sbx-exec ID WORKDIR USER STDIN STDOUT STDERR -- NAME=VALUE... ARGV...
# (empty = the default; STDIN and the outputs are files opened here, before dropping root;
# STDIN "-" keeps what qemu-ga feeds in, "" is /dev/null). The caller's environment is
# data here: nothing the caller passes reaches a process while uid or euid is 0 (no
# LD_PRELOAD for the dynamically linked setpriv, no PATH for the lookups). The wrapper
# joins the limited cgroup and sets up stdio; setpriv drops to the user (uid/gid,
# no_new_privs, capability sets); only then does coreutils' `env -i` enter the working
# directory, apply the caller's variables and exec the command.
EXEC = r"""#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset IFS ENV BASH_ENV CDPATH
. /etc/sandboxer/sandbox.conf
id=$1 workdir=$2 user=$3 input=$4 output=$5 errors=$6
shift 7
cgroups=/sys/fs/cgroup/sandbox
# Join our own cgroup first: until we are in it, another exec's sweep below may remove it.
tries=0
until mkdir -p "$cgroups/exec-$id" && echo $$ 2>/dev/null > "$cgroups/exec-$id/cgroup.procs"; do
    tries=$((tries + 1))
    [ $tries -lt 20 ] || exit 125
done
rmdir "$cgroups"/exec-* 2>/dev/null  # cgroups of finished commands; busy ones (ours) stay
case $input in
    -) ;;  # the data qemu-ga writes to our stdin
    "") exec < /dev/null ;;
    *) exec < "$input"; rm -f "$input" ;;
esac
[ -n "$output" ] && exec > "$output"
[ -n "$errors" ] && exec 2> "$errors"
[ -n "$user" ] || user=$SBX_USER
home=/
if [ -n "$user" ]; then
    uid=${user%%:*}
    case $uid in *[!0-9]*) uid=$(id -u -- "$uid") || exit 126 ;; esac
    case $user in
        *:*) gid=${user#*:} ;;
        *) gid=$(id -g -- "$uid" 2>/dev/null) || gid=$uid ;;
    esac
    while IFS=: read -r _ _ entry_uid _ _ entry_home _; do
        [ "$entry_uid" = "$uid" ] && home=$entry_home && break
    done < /etc/passwd
fi

# After setpriv, as the user: env enters the working directory, sets the caller's
# variables (HOME first, so theirs wins) and looks the command up in the caller's PATH.
set -- "HOME=$home" "$@"
[ -n "$workdir" ] && set -- --chdir="$workdir" "$@"
set -- -- /usr/bin/env -i "$@"
[ -n "$user" ] && set -- --reuid="$uid" --regid="$gid" --clear-groups "$@"
[ "$SBX_NNP" = 1 ] && set -- --nnp "$@"
[ -n "$SBX_BOUNDING" ] && set -- --bounding-set="$SBX_BOUNDING" --inh-caps="$SBX_BOUNDING" "$@"
[ -n "$SBX_AMBIENT" ] && set -- --ambient-caps="$SBX_AMBIENT" "$@"
[ "$1" = -- ] && shift && exec "$@"
exec /usr/bin/setpriv "$@"
"""

# sbx-kill ID: kill every process one exec started (the whole cgroup, daemons included).
KILL = r"""#!/bin/sh
cgroup=/sys/fs/cgroup/sandbox/exec-$1
[ -e "$cgroup/cgroup.kill" ] && echo 1 > "$cgroup/cgroup.kill"
"""

# qemu-ga's guest-shutdown runs /sbin/shutdown, which busybox lacks: ask PID 1 to stop.
SHUTDOWN = """#!/bin/sh
echo stop > /run/initctl
"""


def fill(template: str, **values: str) -> str:
    """`template` with each @NAME@ replaced by values[NAME]."""
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    return template


def init_script() -> str:
    return fill(
        INIT,
        MOUNTS=MOUNTS.rstrip("\n"),
        LIMITS=LIMITS.rstrip("\n"),
        CHANNELS=CHANNELS.rstrip("\n"),
        MODULE_DIR=MODULE_DIR,
        AGENT_CHANNEL=AGENT_CHANNEL,
        PROBE_MARKER=PROBE_MARKER,
        PROBE_ARGUMENT=PROBE_ARGUMENT,
        INBOUND_NET=INBOUND_NET,
        INBOUND_MAC=INBOUND_MAC,
        OUTBOUND_NET=OUTBOUND_NET,
        OUTBOUND_MAC=OUTBOUND_MAC,
    )
