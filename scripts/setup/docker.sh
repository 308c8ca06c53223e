# Sourced by scripts/setup-engines.sh: defines setup_docker.
# shellcheck shell=bash

setup_docker() {
    apt_install docker.io busybox-static
    if ! docker info >/dev/null 2>&1; then
        start_daemon dockerd /var/log/sandboxer-dockerd.log dockerd
        wait_for dockerd 60 docker info
    fi
    log "docker ready: $(docker version --format '{{.Server.Version}}')"
}
