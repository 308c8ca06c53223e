# Sourced by scripts/setup-engines.sh: defines setup_libvirt.
# shellcheck shell=bash

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
