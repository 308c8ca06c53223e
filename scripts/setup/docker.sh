# Sourced by scripts/setup-engines.sh: defines setup_docker.
# shellcheck shell=bash

DOCKER_CONF=/etc/docker/daemon.json

setup_docker() {
    # crun: the second OCI runtime a sandbox may ask for (SandboxSpec(runtime="crun")).
    apt_install docker.io busybox-static crun jq
    register_docker_runtime crun /usr/bin/crun
    if ! docker info >/dev/null 2>&1; then
        start_daemon dockerd /var/log/sandboxer-dockerd.log dockerd
        wait_for dockerd 60 docker info
    elif ! docker_has_runtime crun; then
        # SIGHUP: dockerd reloads daemon.json (runtimes included); containers keep running.
        log "reloading dockerd to register crun"
        kill -HUP "$(cat /var/run/docker.pid)"
        wait_for "dockerd to register crun" 10 docker_has_runtime crun
    fi
    log "docker ready: $(docker version --format '{{.Server.Version}}'), runtimes: $(docker_runtimes)"
}

# register_docker_runtime NAME PATH: add it to daemon.json, keeping every other key there.
register_docker_runtime() {
    local name=$1 path=$2 current='{}'
    [ -s "$DOCKER_CONF" ] && current=$(cat "$DOCKER_CONF")
    if jq -e --arg n "$name" --arg p "$path" '.runtimes[$n].path == $p' <<<"$current" >/dev/null; then
        return 0
    fi
    log "registering OCI runtime $name ($path) in $DOCKER_CONF"
    mkdir -p "$(dirname "$DOCKER_CONF")"
    jq --arg n "$name" --arg p "$path" '.runtimes[$n] = {path: $p}' <<<"$current" >"$DOCKER_CONF.new"
    mv "$DOCKER_CONF.new" "$DOCKER_CONF"
}

docker_runtimes() { docker info --format '{{json .Runtimes}}' | jq -r 'keys | join(", ")'; }
docker_has_runtime() { docker info --format '{{json .Runtimes}}' | jq -e --arg n "$1" 'has($n)' >/dev/null; }
