# Sourced by scripts/setup-engines.sh: defines setup_incus.
# shellcheck shell=bash

setup_incus() {
    local src=/etc/apt/sources.list.d/sandboxer-backports.sources
    if [ ! -f "$src" ]; then
        cat >"$src" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        apt_updated=0
    fi
    # Not the `incus` meta package: it pulls QEMU 10, which breaks libvirt 9.0.
    # dnsmasq-base: Incus refuses to create managed networks (isolated, bridge) without it;
    # nsenter and ip: the start-host hook that raises a sandbox's loopback.
    apt_install busybox-static incus-base/bookworm-backports incus-client/bookworm-backports \
        dnsmasq-base util-linux iproute2 btrfs-progs
    if ! incus info >/dev/null 2>&1; then
        start_daemon incusd /var/log/sandboxer-incusd.log /usr/libexec/incus/incusd --group root
        wait_for incusd 60 incus info
    fi
    incus storage show default >/dev/null 2>&1 || incus storage create default dir >/dev/null
    # Sandboxes' roots on btrfs (a loop file) where the kernel has it: a new sandbox is a
    # snapshot of its image, where the dir driver copies the whole tree (a Debian image:
    # 3 s instead of 0.3 s per launch). The dir pool stays as the fallback.
    local pool=default
    if grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null; then
        if incus storage show sandboxer >/dev/null 2>&1 \
            || incus storage create sandboxer btrfs size=20GiB >/dev/null; then
            pool=sandboxer
        else
            log "no btrfs pool (incus storage create failed): sandboxes use the dir pool"
        fi
    fi
    if incus profile device get default root pool >/dev/null 2>&1; then
        incus profile device set default root pool="$pool" >/dev/null
    else
        incus profile device add default root disk path=/ pool="$pool" >/dev/null
    fi
    log "incus ready: $(incus version | tail -1)"
}
