#!/bin/sh
# sandboxer's set-up of a cloud image, after cloud-init wrote /etc/sandboxer.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
log() { echo "sandboxer-setup: $*" >/dev/console; }
fail() { log "$*"; echo "$*" > @FAILED_FILE@; exit 1; }
mkdir -p -m 700 @STAGING_DIR@ @AGENT_STATE_DIR@
. /etc/sandboxer/sandbox.conf

address=127.0.1.1
if [ "$SBX_NET_OUT" = 1 ]; then
    # QEMU maps the outbound network's .2 to the host's loopback: keep it out of reach.
    ip route add prohibit @OUTBOUND_NET@.2/32 || fail "cannot prohibit the host's address"
    address=@OUTBOUND_NET@.15
fi
[ "$SBX_NET_IN" = 1 ] && address=@INBOUND_NET@.15
if [ -n "$SBX_NAMESERVERS" ] && [ ! -e /etc/resolv.conf ]; then
    # network-config's nameservers reach only a resolver daemon (systemd-resolved);
    # an image without one gets them directly (a dangling link to its stub goes).
    rm -f /etc/resolv.conf
    for server in $SBX_NAMESERVERS; do
        echo "nameserver $server"
    done > /etc/resolv.conf
fi
if [ -s /etc/sandboxer/hosts ]; then
    # On named networks: itself at its first one's address, and the peers known at create.
    cat /etc/sandboxer/hosts >> /etc/hosts
else
    echo "$address $SBX_HOSTNAME" >> /etc/hosts
fi
if [ -s /etc/sandboxer/mounts ]; then
    modprobe -a 9pnet_virtio 9p || fail "the guest kernel has no 9p modules, needed for mounts"
fi
@MOUNTS@
@CHANNELS@
# qemu-ga again, now under the drop-in: the profile's controls reach every command.
# shellcheck disable=SC2015 # fail if either step fails: that is the point
systemctl daemon-reload && systemctl restart qemu-guest-agent.service \
    || fail "cannot restart qemu-guest-agent.service (is it installed?)"
# After systemd's reload: it rewrites the root cgroup's controllers then.
@LIMITS@
limit() {  # limit FILE VALUE: fail if VALUE is asked for and FILE is missing or unlimited
    case $(cat "/sys/fs/cgroup/sandbox/$1" 2>/dev/null || echo max) in
        max*) [ -z "$2" ] || fail "the guest kernel did not take $1 = $2" ;;
    esac
}
limit pids.max "$SBX_PIDS"
limit memory.max "$SBX_MEMORY"
limit cpu.max "$SBX_CPU_MAX"
: > @READY_FILE@
log ready
