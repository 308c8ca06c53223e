# A target that leads through a symlink (an image's, or an earlier mount's) onto the
# guest's own paths would hide what root-run steps use: resolved in this root, refused.
# (Targets named as they are were checked on the host.)
system_path() {
    case $1 in @SYSTEM_PATHS@) return 0 ;; esac
    return 1
}
check_target() {
    resolved=$(realpath "$1") || fail "cannot resolve the mount target $1"
    if [ "$resolved" != "$1" ] && system_path "$resolved"; then
        fail "refusing to mount on $1: it leads to $resolved, a system path"
    fi
}
while read -r tag mode target; do
    mkdir -p "$target"
    check_target "$target"
    mount -t 9p -o "$mode,nosuid,nodev,trans=virtio,version=9p2000.L,msize=262144,cache=none" \
        "$tag" "$target" || log "mounting $tag on $target failed"
done < @CONF@/mounts
while read -r size mode target; do
    mkdir -p "$target"
    check_target "$target"
    mount -t tmpfs -o "size=$size,mode=$mode,nosuid,nodev" tmpfs "$target"
done < @CONF@/tmpfs
