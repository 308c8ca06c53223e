#!/bin/sh
# sandboxer VM guest init (PID 1).
export PATH=@TOOLS_PATH@
log() { echo "sandboxer-init: $*" >/dev/console; }
# The host sees the VM stop while booting, with this on the console. A reboot ends the VM
# (on_reboot=destroy); without ACPI a poweroff would only halt it, up to the host's deadline.
fail() { log "$*"; reboot -f; }
load() {  # load a module group in the order the host listed it (stage 1 or the built-in root)
    [ -e "/@MODULE_DIR@/$1.list" ] || return 0
    while read -r module; do
        [ -d "/sys/module/$module" ] && continue
        insmod "/@MODULE_DIR@/$module.ko" || log "insmod $module failed"
    done < "/@MODULE_DIR@/$1.list"
}
if [ "$1" != switched ]; then
    # Stage 1, in the initramfs. The kernel's rootfs can never be pivoted away from, and
    # bwrap pivots, so the root moves elsewhere and stage 2 starts there.
    mount -t proc proc /proc
    # The KVM check boots this guest with @PROBE_ARGUMENT@: getting here is all it needs.
    if grep -qw @PROBE_ARGUMENT@ /proc/cmdline; then
        echo "@PROBE_MARKER@" >/dev/console
        reboot -f
    fi
    . /etc/sandboxer/sandbox.conf
    if [ "$SBX_IMAGE_DISK" = 1 ]; then
        # An OCI image: its ext4 disk (read-only, shared by every sandbox of the image)
        # under a tmpfs overlay becomes the root. Sandboxer's own programs go to a
        # read-only tmpfs at /.sandboxer in it, with their libraries and loader, so the
        # image's libc never matters; every root-run step from here on runs from there.
        mount -t devtmpfs devtmpfs /dev
        mount -t sysfs sysfs /sys
        load agent
        load disk
        [ "$SBX_NICS" = 1 ] && load net
        [ -s @CONF@/mounts ] && load 9p
        mkdir -p /image/lower /image/layer /newroot
        tries=0
        while [ ! -b /dev/vda ] && [ $tries -lt 500 ]; do  # virtio_blk probes asynchronously
            sleep 0.01
            tries=$((tries + 1))
        done
        mount -t ext4 -o ro,nodev /dev/vda /image/lower || log "cannot mount the image's disk"
        mount -t tmpfs -o mode=755 layer /image/layer
        mkdir /image/layer/upper /image/layer/work
        mount -t overlay -o nodev,lowerdir=/image/lower,upperdir=/image/layer/upper,workdir=/image/layer/work \
            overlay /newroot
        # Where stage 2 mounts and writes its own things, whatever the image has (a
        # symlink would lead those mounts elsewhere, over sandboxer's own files) goes.
        rm -rf /newroot/.sandboxer
        mkdir -m 755 /newroot/.sandboxer
        for path in /proc /sys /dev /run /etc; do
            [ -L "/newroot$path" ] && rm -f "/newroot$path"
            mkdir -p "/newroot$path"
        done
        # Root-run steps (setpriv) look names up through NSS: with the image's own
        # nsswitch.conf, glibc would load the image's libnss_*.so into them, as root. The
        # modules that files and dns need are inside glibc: nothing is loaded from the image.
        rm -rf /newroot/etc/nsswitch.conf
        printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' \
            > /newroot/etc/nsswitch.conf
        mount -t tmpfs -o mode=755,nodev tools /newroot/.sandboxer
        cp -a /@OCI_DIR@/. /newroot/.sandboxer/
        while read -r kind path; do
            cp "$path" "/newroot/.sandboxer/$kind/"
        done < /@OCI_DIR@/tools.list
        mkdir /newroot/.sandboxer/etc
        cp -a /etc/sandboxer/. /newroot/.sandboxer/etc/
        mount -o remount,ro /newroot/.sandboxer
        umount /sys /dev /proc
        if [ "$SBX_SYSTEMD" = 1 ]; then
            # sandboxer/systemd: the image's systemd is PID 1 (no_new_privs on it, so on
            # everything, when the profile asks), and runs stage 2 as an early unit, from
            # the overlay's tmpfs layer. Our own unit file and link: nothing the image had.
            units=/newroot/etc/systemd/system
            rm -rf "$units/@SYSTEMD_UNIT_NAME@" "$units/sysinit.target.wants/@SYSTEMD_UNIT_NAME@"
            mkdir -p "$units/sysinit.target.wants"
            cat > "$units/@SYSTEMD_UNIT_NAME@" <<'UNIT'
@SYSTEMD_UNIT@
UNIT
            ln -s "../@SYSTEMD_UNIT_NAME@" "$units/sysinit.target.wants/@SYSTEMD_UNIT_NAME@"
            # The console's login prompt would wait 90 s for a device unit that, without
            # udev in the image, never appears; the console carries the sandbox's logs.
            ln -sf /dev/null "$units/serial-getty@ttyS0.service"
            init=/sbin/init
            [ "$SBX_NNP" = 1 ] && init="@OCI_SETPRIV@ --nnp -- $init"
            # shellcheck disable=SC2086 # $init is the command line built above
            exec switch_root /newroot $init
        fi
        exec switch_root /newroot /.sandboxer/bin/sh /.sandboxer/init switched
    fi
    umount /proc
    mount -t tmpfs -o mode=755 guestroot /mnt
    for entry in /*; do
        case $entry in
            /mnt|/proc|/sys) mkdir "/mnt$entry" ;;
            *) cp -a "$entry" /mnt/ ;;
        esac
    done
    exec switch_root /mnt /init switched
fi
. @CONF@/sandbox.conf
# Under systemd (sandboxer/systemd), it mounted these, and the cgroup file system, itself.
if [ "$SBX_SYSTEMD" != 1 ]; then
    mkdir -p /proc /sys /dev /run
    mount -t proc -o nosuid,nodev,noexec proc /proc
    mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
    mount -t devtmpfs -o nosuid,mode=755 devtmpfs /dev
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o nosuid,noexec,mode=620,ptmxmode=666 devpts /dev/pts
    mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
    mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
fi
mkdir -m 700 /run/sandboxer /run/qga
mkfifo -m 600 @STOP_FIFO@
load agent

hostname "$SBX_HOSTNAME"
ip link set lo up
# Every network has fixed addresses, so no DHCP round trip at boot (and no DHCP client).
nic() {  # nic MAC ADDRESS/PREFIX: the NIC with that MAC at that address
    tries=0
    while [ $tries -lt 500 ]; do  # virtio_net may still be probing
        for device in /sys/class/net/*; do
            [ "$(cat "$device/address")" = "$1" ] || continue
            ip link set "${device##*/}" up
            ip addr add "$2" dev "${device##*/}"
            return
        done
        sleep 0.01
        tries=$((tries + 1))
    done
    log "no network device with MAC $1"
}
[ "$SBX_NICS" = 1 ] && load net
address=127.0.1.1
# QEMU user-mode networks: in each, .2 is QEMU's own address, which leads to the host's
# loopback.
if [ "$SBX_NET_OUT" = 1 ]; then
    # Outbound traffic, NATed by QEMU. Its .2 would reach host-local services: that one
    # address is prohibited (changing routes needs CAP_NET_ADMIN, which commands lack).
    nic @OUTBOUND_MAC@ @OUTBOUND_NET@.15/24
    ip route add default via @OUTBOUND_NET@.2
    ip route add prohibit @OUTBOUND_NET@.2/32
    address=@OUTBOUND_NET@.15
fi
if [ "$SBX_NET_IN" = 1 ]; then
    # Published ports come in here, from .2; QEMU (restrict=on) lets nothing else through.
    nic @INBOUND_MAC@ @INBOUND_NET@.15/24
    address=@INBOUND_NET@.15
fi
# Named networks: libvirt bridges whose dnsmasq (at the gateway) knows the members' names.
while read -r mac member_address; do
    nic "$mac" "$member_address"
done < @CONF@/networks
[ -n "$SBX_ROUTE" ] && ip route add default via "$SBX_ROUTE"
if [ "$SBX_IMAGE_DISK" = 1 ]; then
    # The image's own files would be kept (or, as symlinks, followed): fresh ones.
    mkdir -p /etc
    rm -f /etc/hosts
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > /etc/hosts
    mkdir -p "$SBX_WORKDIR"
fi
if [ -n "$SBX_NAMESERVERS" ]; then
    rm -f /etc/resolv.conf
    for server in $SBX_NAMESERVERS; do
        echo "nameserver $server"
    done > /etc/resolv.conf
fi
# Without one, glibc asks DNS first and reads /etc/hosts only when DNS is unreachable.
[ -e /etc/nsswitch.conf ] \
    || printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' > /etc/nsswitch.conf
rm -f /etc/hostname
echo "$SBX_HOSTNAME" > /etc/hostname
if [ -s @CONF@/hosts ]; then
    # On named networks: itself at its first one's address, and the peers known at create.
    cat @CONF@/hosts >> /etc/hosts
else
    echo "$address $SBX_HOSTNAME" >> /etc/hosts
fi

[ -s @CONF@/mounts ] && load 9p
@MOUNTS@
# The agent stays outside the commands' limits: in a cgroup of its own, or under systemd
# in this unit's (which systemd tracks; the commands' cgroup is beside systemd's own).
agent_cgroup=
if [ "$SBX_SYSTEMD" != 1 ]; then
    mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
    agent_cgroup=/sys/fs/cgroup/agent
    mkdir "$agent_cgroup"
fi
@LIMITS@

[ "$SBX_ROOT_RO" = 1 ] && mount -o remount,ro /

@CHANNELS@
port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = "@AGENT_CHANNEL@" ] && port="/dev/${p##*/}"
done
[ -n "$port" ] || log "no guest agent channel found"
# The agent, and so every command, lives in a PID namespace of its own: commands see
# their own processes, not init or the kernel's threads. Not under systemd: there, as in
# a system container, commands see the system they run in; systemd reaps their orphans,
# and its tools (systemctl as root) only speak with a PID 1 they can see.
pid_namespace=--unshare-pid
[ "$SBX_SYSTEMD" = 1 ] && pid_namespace=
agent="@QEMU_GA@ -m virtio-serial -p $port -t /run/qga -f /run/qga/pid"
# sandboxer's command service (sbx-service, on ports of its own) runs the agent as its
# child: both get the filter, no_new_privs and the namespace below; it drops each
# command to the user and the profile's capability sets itself.
service_ports=
for p in /sys/class/virtio-ports/*; do
    case "$(cat "$p/name" 2>/dev/null)" in
        @SERVICE_CHANNEL@*) service_ports="$service_ports /dev/${p##*/}" ;;
    esac
done
if [ -n "$service_ports" ]; then
    service="$(command -v sbx-service)"
    [ "$SBX_NNP" = 1 ] && service="$service --nnp"
    [ -n "$SBX_BOUNDING" ] && service="$service --bounding $SBX_BOUNDING"
    [ -n "$SBX_AMBIENT" ] && service="$service --ambient $SBX_AMBIENT"
    agent="$service $service_ports -- $agent"
fi
if [ "$SBX_SECCOMP" = 1 ]; then
    # bwrap also loads the profile's filter and sets no_new_privs on the agent; both are
    # inherited by every process the agent starts.
    agent="@BWRAP@ $pid_namespace --dev-bind / / --proc /proc --seccomp 9 -- $agent"
else
    [ "$SBX_NNP" = 1 ] && agent="@SETPRIV@ --nnp -- $agent"
    [ -n "$pid_namespace" ] && agent="unshare -p -f --mount-proc $agent"
fi
(
    while :; do
        # shellcheck disable=SC2086 # $agent is the command line built above: split on purpose
        sh -c '{ [ -z "$1" ] || echo $$ > "$1/cgroup.procs"; } && shift && exec "$@"' \
            agent "$agent_cgroup" $agent 9< @CONF@/seccomp.bpf
        log "guest agent exited ($?), restarting"
        sleep 1
    done
) &
log "ready"

# /sbin/shutdown (what qemu-ga runs for guest-shutdown) cannot signal PID 1 from the
# agent's PID namespace; it writes to this FIFO instead.
if [ "$SBX_SYSTEMD" = 1 ]; then
    # systemd's SIGRTMIN+5 (glibc's SIGRTMIN is 34): a clean reboot, which ends the VM
    # (on_reboot=destroy). Its SIGTERM would re-execute it; a poweroff without ACPI
    # would halt the guest, not end it.
    ( read -r _ < @STOP_FIFO@; kill -39 1 ) &
    # systemd stops this unit with SIGTERM, which ends this script, then its cgroup.
    wait
    exit 0
fi
( read -r _ < @STOP_FIFO@; kill -TERM 1 ) &

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
