# Sourced by scripts/setup-engines.sh: defines setup_cgroups.
# shellcheck shell=bash

UNIFIED=/sys/fs/cgroup/unified

# On a hybrid host (cgroup v1 controllers, plus a v2 hierarchy at $UNIFIED), a controller
# the v1 side left unmounted sits on v2 (here: hugetlb). crun then refuses every container
# ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"). Mount each
# such controller as a v1 hierarchy, as the others are: v2 keeps no controllers, and
# Docker, Incus and libvirt use it the same as before. Only while v2 delegates none of them
# (empty subtree_control), so nothing in use moves.
setup_cgroups() {
    [ -r "$UNIFIED/cgroup.controllers" ] || return 0
    local controllers controller
    controllers=$(cat "$UNIFIED/cgroup.controllers")
    [ -n "$controllers" ] || return 0
    if [ -n "$(cat "$UNIFIED/cgroup.subtree_control")" ]; then
        log "cgroup v2 delegates $(cat "$UNIFIED/cgroup.subtree_control"): left as it is (crun will refuse)"
        return 0
    fi
    for controller in $controllers; do
        log "mounting the $controller cgroup controller as a v1 hierarchy (for crun)"
        mkdir -p "/sys/fs/cgroup/$controller"
        mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller"
    done
}
