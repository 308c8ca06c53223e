# Sourced by scripts/setup-engines.sh: defines setup_registry.
# shellcheck shell=bash
#
# A real image registry for the tests (Debian's docker-registry, the Docker Registry HTTP
# API v2), on 127.0.0.1:5000 ONLY: no other host can read or push. Docker treats
# 127.0.0.0/8 as an insecure (plain HTTP) registry by default, so `docker push
# 127.0.0.1:5000/NAME` works without any daemon configuration.

registry_address=127.0.0.1:5000
registry_config=/etc/sandboxer/registry.yml

# The addresses something listens on at port 5000 (TCP), one a line.
registry_listeners() {
    ss -Hltn 'sport = :5000' | awk '{print $4}'
}

# The package's own service (sysv or systemd) listens on :5000 on every interface, with
# its own config: stop it and keep it from starting again.
stop_packaged_registry() {
    if [ -d /run/systemd/system ]; then
        systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
    elif [ -f /var/run/docker-registry.pid ]; then
        /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    fi
    update-rc.d docker-registry disable >/dev/null 2>&1 || true
}

setup_registry() {
    apt_install docker-registry curl iproute2
    mkdir -p "$(dirname "$registry_config")"
    cat >"$registry_config" <<CONFIG
# Written by sandboxer's scripts/setup/registry.sh: the tests' registry, loopback only.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: $registry_address
  headers:
    X-Content-Type-Options: [nosniff]
CONFIG
    if registry_listeners | grep -qv "^$registry_address\$"; then
        log "something listens on port 5000 beyond $registry_address: stopping Debian's docker-registry service"
        stop_packaged_registry
        wait_for "port 5000 to close" 30 sh -c '! ss -Hltn "sport = :5000" | grep -q .'
    fi
    if ! curl -fsS "http://$registry_address/v2/" >/dev/null 2>&1; then
        # As the package's unprivileged user, which owns the storage.
        start_daemon docker-registry /var/log/sandboxer-registry.log \
            setpriv --reuid=docker-registry --regid=docker-registry --init-groups \
            /usr/bin/docker-registry serve "$registry_config"
        wait_for docker-registry 30 curl -fsS "http://$registry_address/v2/"
    fi
    if registry_listeners | grep -qv "^$registry_address\$"; then
        log "port 5000 is open beyond $registry_address: $(registry_listeners | tr '\n' ' ')"
        return 1
    fi
    log "registry ready: http://$registry_address (loopback only)"
}
