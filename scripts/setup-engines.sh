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

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Before any daemon starts: what crun needs of a hybrid cgroup layout.
source "$here/setup/cgroups.sh"; setup_cgroups
for engine in "${want[@]}"; do
    case "$engine" in
        docker|incus|libvirt) source "$here/setup/$engine.sh"; "setup_$engine" ;;
        *) log "unknown engine $engine (docker, incus, libvirt)"; exit 2 ;;
    esac
done
# The image store's tools, for every engine.
source "$here/setup/images.sh"; setup_images
# The local registry the tests push to and pull from (`docker push` needs Docker).
if wants docker; then source "$here/setup/registry.sh"; setup_registry; fi
