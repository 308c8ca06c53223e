#!/usr/bin/env bash
# Install and start the engines sandboxer's tests need, on Debian 12, as root.
# Idempotent: safe to run again; it only installs what is missing and only
# starts daemons that are not answering.
#
#   scripts/setup-engines.sh [docker] [incus] [libvirt]    (default: all three)
set -euo pipefail

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(docker incus libvirt)
log() { printf '[setup] %s\n' "$*" >&2; }
wants() { local x; for x in "${want[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "${pkg%%/*}" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local what=$1 secs=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $what"; return 1; fi
        sleep 0.2
    done
}

start_daemon() {  # start_daemon NAME LOGFILE COMMAND...: detached, outlives this script
    local name=$1 logfile=$2; shift 2
    log "starting $name"
    setsid "$@" >"$logfile" 2>&1 < /dev/null &
}

setup_docker() {
    apt_install docker.io busybox-static
    if ! docker info >/dev/null 2>&1; then
        start_daemon dockerd /var/log/sandboxer-dockerd.log dockerd
        wait_for dockerd 60 docker info
    fi
    log "docker ready: $(docker version --format '{{.Server.Version}}')"
}

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
    apt_install busybox-static incus-base/bookworm-backports incus-client/bookworm-backports
    if ! incus info >/dev/null 2>&1; then
        start_daemon incusd /var/log/sandboxer-incusd.log /usr/libexec/incus/incusd --group root
        wait_for incusd 60 incus info
    fi
    incus storage show default >/dev/null 2>&1 || incus storage create default dir >/dev/null
    incus profile device get default root pool >/dev/null 2>&1 \
        || incus profile device add default root disk path=/ pool=default >/dev/null
    log "incus ready: $(incus version | tail -1)"
}

setup_libvirt() {
    apt_install libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils \
        libvirt-dev pkg-config qemu-guest-agent busybox-static cpio
    # A root-only /dev/kvm makes libvirt re-probe QEMU (~40 s) at every domain start.
    if [ -e /dev/kvm ]; then
        getent group kvm >/dev/null || groupadd -r kvm
        chgrp kvm /dev/kvm && chmod 660 /dev/kvm
    fi
    pgrep -x virtlogd >/dev/null || start_daemon virtlogd /var/log/sandboxer-virtlogd.log virtlogd
    if ! virsh -c qemu:///system version >/dev/null 2>&1; then
        pgrep -x libvirtd >/dev/null || start_daemon libvirtd /var/log/sandboxer-libvirtd.log libvirtd
        wait_for libvirtd 60 virsh -c qemu:///system version
    fi
    log "libvirt ready"
}

wants docker && setup_docker
wants incus && setup_incus
wants libvirt && setup_libvirt
exit 0
