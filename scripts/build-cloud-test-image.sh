#!/usr/bin/env bash
# Build a small, BIOS-bootable Debian 12 (bookworm, amd64) cloud image as a compressed qcow2,
# from the Debian archive only: the libvirt backend's "own disk image + cloud-init (NoCloud
# seed)" tests boot it. Run as root; needs loop devices.
#
#   scripts/build-cloud-test-image.sh [OUTPUT]
#       OUTPUT defaults to /var/lib/sandboxer/test-images/debian-12-cloud.qcow2
#
# Cached: OUTPUT.stamp holds a hash of this script; when it matches, nothing is rebuilt.
# The image: one MBR partition with ext4 (root=UUID), extlinux without a menu, console on
# ttyS0, the plain linux-image-amd64 kernel (it has the 9p modules), systemd, cloud-init
# limited to NoCloud, qemu-guest-agent (started by udev when its virtio port exists),
# ifupdown as cloud-init's network renderer, busybox's httpd and nc for the contract
# suite's network tests; no root password, empty machine-id.
set -euo pipefail

out=${1:-/var/lib/sandboxer/test-images/debian-12-cloud.qcow2}
disk_size_mib=2048          # virtual size; cloud-init's growpart grows the partition if larger
part_start_sectors=2048     # first partition at 1 MiB
packages=(
    linux-image-amd64 systemd-sysv udev dbus kmod zstd e2fsprogs
    cloud-init cloud-guest-utils qemu-guest-agent
    ifupdown isc-dhcp-client iproute2 netbase
    util-linux procps python3
    busybox-static
)
# The contract suite's network tests serve and fetch with busybox's httpd and nc.
busybox_commands=(httpd nc)
# Storage and boot modules the initramfs needs (MODULES=list keeps it small and quick to
# unpack under TCG); modules built into the kernel are skipped by mkinitramfs.
initramfs_modules=(virtio_pci virtio_blk virtio_scsi sd_mod ahci ata_piix ext4 crc32c_generic)

log() { printf '[cloud-image] %s\n' "$*" >&2; }

self=$(readlink -f "${BASH_SOURCE[0]}")
stamp_file="$out.stamp"
script_hash=$(sha256sum "$self" | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$script_hash" ]; then
    log "up to date: $out"
    exit 0
fi
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

export DEBIAN_FRONTEND=noninteractive
apt_install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# host_sources: print "URI SUITE" for every main-component suite in the host's apt sources,
# from both the one-line (.list) and the deb822 (.sources) formats.
host_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI SUITE COMPONENT...
        sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" \
            | awk '$1 == "deb" { for (i = 4; i <= NF; i++) if ($i == "main") print $2, $3 }'
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # Stanzas are separated by blank lines; print URIs x Suites of enabled deb stanzas.
        awk 'function flush() {
                 if (types ~ /(^| )deb( |$)/ && comps ~ /(^| )main( |$)/ && enabled != "no") {
                     nu = split(uris, u, " "); ns = split(suites, s, " ")
                     for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
                 }
                 types = uris = suites = comps = ""; enabled = "yes"
             }
             BEGIN { enabled = "yes" }
             /^[ \t]*#/ { next }
             /^[ \t]*$/ { flush(); next }
             { key = tolower($1); sub(/^[^:]*:[ \t]*/, "") }
             key == "types:" { types = $0 } key == "uris:" { uris = $0 }
             key == "suites:" { suites = $0 } key == "components:" { comps = $0 }
             key == "enabled:" { enabled = tolower($0) }
             END { flush() }' "$f"
    done
}

# mirror_for SUITE: the host's URI for SUITE, or the default Debian mirror.
mirror_for() {
    local uri
    uri=$(host_sources | awk -v s="$1" '$2 == s { print $1; exit }')
    if [ -z "$uri" ]; then
        case "$1" in
            *-security) uri=http://deb.debian.org/debian-security ;;
            *) uri=http://deb.debian.org/debian ;;
        esac
    fi
    printf '%s\n' "${uri%/}"
}

# ---- temp dir and cleanup -------------------------------------------------------------------
tmp=$(mktemp -d /tmp/cloudimg-build.XXXXXX)
mnt="$tmp/mnt"
loop_dev=""
staged=""
cleanup() {
    # Unmount whatever is left below $tmp (our loop mount, or mmdebstrap's /proc, /sys and /dev
    # if it was killed), deepest first, so that rm never walks into a mounted filesystem.
    findmnt -rn -o TARGET | grep "^$tmp/" | sort -r | xargs -r -n1 umount -l || true
    if [ -n "$loop_dev" ]; then losetup -d "$loop_dev" || true; fi
    rm -rf --one-file-system "$tmp"
    if [ -n "$staged" ]; then rm -f "$staged"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

apt_install_missing mmdebstrap extlinux syslinux-common qemu-utils e2fsprogs fdisk

# ---- root filesystem --------------------------------------------------------------------------
root_uuid=$(cat /proc/sys/kernel/random/uuid)
overlay="$tmp/overlay"   # files placed before the packages install, so they take effect at once
mkdir -p "$overlay/etc/cloud/cloud.cfg.d" "$overlay/etc/initramfs-tools/conf.d" \
    "$overlay/usr/share/initramfs-tools/modules.d" "$overlay/etc/network/interfaces.d" \
    "$overlay/etc/default"
cat > "$overlay/etc/cloud/cloud.cfg.d/90-datasource.cfg" <<'EOF'
# This image is booted with a NoCloud seed (a "cidata" ISO); skip probing other clouds.
datasource_list: [ NoCloud, None ]
EOF
# FSTYPE: the fsck hook cannot probe the (absent) root device inside the build chroot.
printf 'MODULES=list\nFSTYPE=ext4\n' > "$overlay/etc/initramfs-tools/conf.d/cloud-image.conf"
printf '%s\n' "${initramfs_modules[@]}" \
    > "$overlay/usr/share/initramfs-tools/modules.d/cloud-image.conf"
cat > "$overlay/etc/network/interfaces" <<'EOF'
# cloud-init writes the network configuration to interfaces.d/50-cloud-init
auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
EOF
# In place before the kernel installs, so the initramfs gets e2fsck for the root filesystem.
cat > "$overlay/etc/fstab" <<EOF
UUID=$root_uuid / ext4 rw,discard,errors=remount-ro 0 1
EOF
# C.UTF-8 needs no locale-gen, so cloud-init's locale module has nothing to generate at boot.
echo 'LANG=C.UTF-8' > "$overlay/etc/default/locale"

sources=()
for suite in bookworm bookworm-updates bookworm-security; do
    sources+=("deb $(mirror_for "$suite") $suite main")
done
log "mmdebstrap from ${sources[0]#deb }"
# The dpkg path-excludes stay in the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap), so packages
# installed later are trimmed the same way.
mmdebstrap --variant=minbase --arch=amd64 --quiet \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --include="$(IFS=,; echo "${packages[*]}")" \
    --essential-hook="sync-in '$overlay' /" \
    bookworm "$tmp/root" "${sources[@]}"

root="$tmp/root"
for command in "${busybox_commands[@]}"; do
    ln -s /bin/busybox "$root/usr/local/bin/$command"
done
kernel_version=$(basename "$(readlink -f "$root/vmlinuz")" | sed 's/^vmlinuz-//')
echo localhost > "$root/etc/hostname"       # cloud-init sets the real one (local-hostname)
cat > "$root/etc/hosts" <<'EOF'
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
EOF
mkdir -p "$root/boot/extlinux"
# PROMPT 0 boots the default at once (no menu, no timeout). /vmlinuz and /initrd.img are the
# symlinks the kernel package keeps current, so kernel upgrades inside the guest still boot.
cat > "$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
    LINUX /vmlinuz
    INITRD /initrd.img
    APPEND root=UUID=$root_uuid ro console=ttyS0
EOF
# Every boot gets its own identity: empty machine-id, no cloud-init state, no host's files.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/etc/resolv.conf" \
    "$root/etc/apt/apt.conf.d/99mmdebstrap"
rm -rf "$root/var/lib/cloud" "$root/var/lib/apt/lists"/* "$root/var/cache/apt"/* \
    "$root/var/cache/debconf"/*-old "$root/var/log"/*.log "$root/var/log/apt"/* "$root/tmp"/*
log "kernel $kernel_version, root filesystem $(du -sh "$root" | cut -f1)"

# ---- disk image: MBR, one bootable ext4 partition, extlinux -----------------------------------
raw="$tmp/disk.raw"
truncate -s "${disk_size_mib}M" "$raw"
printf 'label: dos\nstart=%s, type=83, bootable\n' "$part_start_sectors" \
    | sfdisk --quiet "$raw"
part_offset=$((part_start_sectors * 512))
part_kib=$(((disk_size_mib * 1024) - part_offset / 1024))
# A 2 GiB filesystem needs no 64bit feature, and extlinux 6.04 is not reliable with it;
# ^orphan_file and ^metadata_csum_seed keep the filesystem readable by older e2fsprogs.
mkfs.ext4 -q -F -L root -U "$root_uuid" -O ^64bit,^orphan_file,^metadata_csum_seed \
    -E offset="$part_offset" -d "$root" "$raw" "${part_kib}k"
loop_dev=$(losetup -f --show -o "$part_offset" --sizelimit "$((part_kib * 1024))" "$raw")
mkdir -p "$mnt"
mount "$loop_dev" "$mnt"
# extlinux reports the device and a harmless geometry warning on stderr; show them on failure.
if ! extlinux_output=$(extlinux --install "$mnt/boot/extlinux" 2>&1); then
    printf '%s\n' "$extlinux_output" >&2
    exit 1
fi
umount "$mnt"
losetup -d "$loop_dev"
loop_dev=""
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none

# ---- compressed qcow2, moved into place atomically ---------------------------------------------
mkdir -p "$(dirname "$out")"
staged=$(mktemp "$out.XXXXXX")
qemu-img convert -c -f raw -O qcow2 "$raw" "$staged"
chmod 0644 "$staged"
mv -f "$staged" "$out"
staged=""
echo "$script_hash" > "$stamp_file"
log "built $out ($(du -h "$out" | cut -f1))"
