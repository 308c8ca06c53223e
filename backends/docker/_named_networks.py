"""Named networks as user-defined Docker bridges; no default route where all is internal.

A named network is a bridge called exactly as sandboxer names it, with the given subnet
(gateway: its first host address) and a ROLE label that tells it from the per-sandbox and
shared networks behind "isolated" and "bridge". Docker's embedded DNS (127.0.0.11 in
every member's resolv.conf) answers each member's container name, which is the sandbox
name. An internal one also has no host address on its bridge (inhibit_ipv4: the embedded
DNS lives in each member's own namespace, so names still resolve) and a guarded "sbi"
bridge name; Docker 20.10 still gives its members a default route to that absent gateway,
which `drop_default_route` takes away.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Mapping
from typing import Any

from sandboxer.backend import (
    INTERNAL_BRIDGE_PREFIX,
    NAMED_BRIDGE_PREFIX,
    EngineError,
    NetworkDriver,
    NetworkInfo,
    SandboxExists,
    gateway,
    guard_network_bridges,
    is_ours,
    logger,
)

from ._endpoint import socket_path
from ._errors import docker_errors
from ._network import ISOLATED_OPTIONS, ROLE
from ._sdk import docker

NAMED = "named"
# Docker's own networks, never named ones.
_BUILTIN = frozenset({"bridge", "host", "none"})
_BRIDGE_NAME = "com.docker.network.bridge.name"


def is_named(network: Mapping[str, Any]) -> bool:
    """A named network: anyone else's, or ours made as one (not a sandbox's private
    network nor the shared bridge, which also carry our labels)."""
    labels = network.get("Labels") or {}
    if network.get("Name") in _BUILTIN:
        return False
    return not is_ours(labels) or labels.get(ROLE) == NAMED


def _info(network: Mapping[str, Any]) -> NetworkInfo:
    pools = (network.get("IPAM") or {}).get("Config") or []
    subnets = [p["Subnet"] for p in pools if "." in (p.get("Subnet") or "")]
    return NetworkInfo(
        "docker",
        network["Name"],
        bool(network.get("Internal")),
        subnets[0] if subnets else "",
        dict(network.get("Labels") or {}),
    )


def _local_root() -> bool:
    """Whether dockerd's host, its processes and firewall are this process's to touch."""
    return socket_path() is not None and os.geteuid() == 0


class DockerNetworks(NetworkDriver):
    def __init__(self, api: Any) -> None:
        self._api = api

    def _find(self, name: str) -> Mapping[str, Any] | None:
        # By listing: inspect by name also matches another network's id prefix.
        with docker_errors():
            found = [n for n in self._api.networks(names=[name]) if n["Name"] == name]
        return found[0] if found else None

    def create(
        self, name: str, *, internal: bool, subnet: str, labels: Mapping[str, str]
    ) -> NetworkInfo:
        if self._find(name) is not None:
            raise SandboxExists(f"a docker network {name!r} exists")
        if _local_root():
            # The guard is this host's: where a local dockerd makes the bridge. Without it
            # an internal bridge still has no IPv4 address, and Docker gives members no IPv6.
            guard_network_bridges()
        prefix = INTERNAL_BRIDGE_PREFIX if internal else NAMED_BRIDGE_PREFIX
        # Named by its kind, so that the guard's rules find it; 15 bytes: IFNAMSIZ.
        options = {_BRIDGE_NAME: prefix + secrets.token_hex(6)}
        if internal:
            options.update(ISOLATED_OPTIONS)
        pool = docker.types.IPAMPool(subnet=subnet, gateway=str(gateway(subnet).ip))
        with docker_errors():
            try:
                self._api.create_network(
                    name,
                    driver="bridge",
                    internal=internal,
                    options=options,
                    ipam=docker.types.IPAMConfig(pool_configs=[pool]),
                    labels={**labels, ROLE: NAMED},
                    check_duplicate=True,
                )
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    raise SandboxExists(f"a docker network {name!r} exists") from exc
                raise
        found = self._find(name)
        if found is None:
            raise EngineError(f"docker network {name}: created, then not found")
        return _info(found)

    def inspect(self, name: str) -> NetworkInfo | None:
        """A named network only: a sandbox's private network (called after it) is none."""
        found = self._find(name)
        return _info(found) if found is not None and is_named(found) else None

    def list(self) -> list[NetworkInfo]:
        with docker_errors():
            found = self._api.networks()
        return [_info(n) for n in found if is_named(n)]

    def remove(self, name: str) -> None:
        found = self._find(name)
        if found is None or not is_ours(found.get("Labels") or {}) or not is_named(found):
            return  # never anyone else's, nor a sandbox's private network
        with docker_errors(), contextlib.suppress(docker.errors.NotFound):
            self._api.remove_network(found["Id"])

    def drop_default_route(self, container: str) -> None:
        """Take the default route from a running sandbox on named networks whose every
        network is internal: it leads to a gateway that is not there."""
        with docker_errors():
            inspected = self._api.inspect_container(container)
            attached = inspected["NetworkSettings"].get("Networks") or {}
            networks = [self._api.inspect_network(n["NetworkID"]) for n in attached.values()]
        named = [n for n in networks if is_ours(n.get("Labels") or {}) and is_named(n)]
        if not named or not all(n.get("Internal") for n in networks):
            return
        pid = inspected["State"].get("Pid") or 0
        if not pid:
            return  # not running: no namespace, no route
        if not _local_root():
            # It leads nowhere (the internal bridge has no address and drops what leaves).
            logger.warning("docker: cannot drop %s's default route from here", container[:12])
            return
        # The host's own ip in the sandbox's network namespace: the sandbox has no
        # CAP_NET_ADMIN, and nothing of the sandbox's runs with more.
        done = subprocess.run(
            [
                "nsenter",
                f"--net=/proc/{pid}/ns/net",
                "ip",
                "-4",
                "route",
                "flush",
                "exact",
                "0.0.0.0/0",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if done.returncode != 0:
            raise EngineError(f"docker: cannot drop the default route: {done.stderr.strip()}")
