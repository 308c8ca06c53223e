while read -r tag mode target; do
    mkdir -p "$target"
    mount -t 9p -o "$mode,nosuid,nodev,trans=virtio,version=9p2000.L,msize=262144,cache=none" \
        "$tag" "$target" || log "mounting $tag on $target failed"
done < /etc/sandboxer/mounts
while read -r size target; do
    mkdir -p "$target"
    mount -t tmpfs -o "size=$size,mode=1777,nosuid,nodev" tmpfs "$target"
done < /etc/sandboxer/tmpfs
