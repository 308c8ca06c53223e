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
        dnsmasq-base util-linux iproute2
    if ! incus info >/dev/null 2>&1; then
        start_daemon incusd /var/log/sandboxer-incusd.log /usr/libexec/incus/incusd --group root
        wait_for incusd 60 incus info
    fi
    incus storage show default >/dev/null 2>&1 || incus storage create default dir >/dev/null
    incus profile device get default root pool >/dev/null 2>&1 \
        || incus profile device add default root disk path=/ pool=default >/dev/null
    log "incus ready: $(incus version | tail -1)"
}
