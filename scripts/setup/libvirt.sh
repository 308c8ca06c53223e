# Sourced by scripts/setup-engines.sh: defines setup_libvirt.
# shellcheck shell=bash

# What the libvirt backend needs on the host:
#   libvirt + QEMU 7.2 (bookworm main; NOT QEMU 10 from backports, which libvirt 9.0 breaks on)
#   libvirt-dev, pkg-config, gcc: pip builds libvirt-python against them
#   qemu-guest-agent, bubblewrap, util-linux (setpriv), busybox-static: copied into the
#     VM guest image, which is built from Debian packages on first use
#   libseccomp2: compiles the profile's seccomp policy for the guest
#   qemu-utils, genisoimage: overlays and cloud-init seeds for user-supplied qcow2 images
LIBVIRT_STATE_DIR=${SANDBOXER_VM_DIR:-/var/lib/sandboxer/vm}

setup_libvirt() {
    apt_install libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils \
        libvirt-dev pkg-config gcc libc6-dev qemu-guest-agent bubblewrap util-linux \
        busybox-static libseccomp2 genisoimage
    # A root-only /dev/kvm makes libvirt re-probe QEMU (~40 s) at every domain start.
    if [ -e /dev/kvm ]; then
        getent group kvm >/dev/null || groupadd -r kvm
        chgrp kvm /dev/kvm && chmod 660 /dev/kvm
    fi
    # Images and per-sandbox files live here; QEMU runs unprivileged and must get in.
    install -d -m 755 "$(dirname "$LIBVIRT_STATE_DIR")" "$LIBVIRT_STATE_DIR"
    pgrep -x virtlogd >/dev/null || start_daemon virtlogd /var/log/sandboxer-virtlogd.log virtlogd
    if ! virsh -c qemu:///system version >/dev/null 2>&1; then
        pgrep -x libvirtd >/dev/null || start_daemon libvirtd /var/log/sandboxer-libvirtd.log libvirtd
        wait_for libvirtd 60 virsh -c qemu:///system version
    fi
    log "libvirt ready"
}
