"""The Docker networks behind "isolated" and "bridge".

isolated: a private internal network per sandbox whose Linux bridge has no host address
(inhibit_ipv4). Internal alone still gives the host the gateway address, and through it
every service listening on 0.0.0.0; without that address the sandbox reaches only itself.
bridge: one shared NAT network that sandboxer makes with inter-container traffic off
(enable_icc=false), instead of Docker's default bridge, where every container reaches
every other; a sandbox also on named networks gets a NAT network of its own instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from sandboxer.backend import PREFIX, EngineError

from ._errors import docker_errors
from ._sdk import docker

BRIDGE = os.environ.get("SANDBOXER_DOCKER_BRIDGE", "sandboxer-bridge")
# Marks the shared bridge as ours; it carries no launch id, so no sandbox's removal takes it.
ROLE = PREFIX + "network"
ISOLATED_OPTIONS = {"com.docker.network.bridge.inhibit_ipv4": "true"}
BRIDGE_OPTIONS = {"com.docker.network.bridge.enable_icc": "false"}


def _keeps_promise(network: Mapping[str, Any]) -> bool:
    options = network.get("Options") or {}
    labels = network.get("Labels") or {}
    return labels.get(ROLE) == "bridge" and all(
        options.get(key) == value for key, value in BRIDGE_OPTIONS.items()
    )


class Networks:
    def __init__(self, client: Any) -> None:
        self._api = client.api
        self._bridge: str | None = None
        self._lock = threading.Lock()

    def create_private(self, name: str, labels: Mapping[str, str], *, internal: bool) -> str:
        """A network for one sandbox, labelled with its launch: its id. Internal for
        "isolated"; a NAT one stands in for the shared bridge when the sandbox is also on
        named networks, whose members' names would otherwise resolve to their addresses on
        the shared bridge (which the embedded DNS asks first), where they cannot meet."""
        with docker_errors():
            created = self._api.create_network(
                name,
                driver="bridge",
                internal=internal,
                options=ISOLATED_OPTIONS if internal else BRIDGE_OPTIONS,
                labels=dict(labels),
                check_duplicate=True,
            )
        return str(created["Id"])

    def bridge(self) -> str:
        """The shared bridge's id, made on first use; one of that name that is not ours,
        or lets sandboxes reach each other, is refused rather than used."""
        with self._lock:
            if self._bridge is None:
                self._bridge = self._find() or self._create()
            return self._bridge

    def _find(self) -> str | None:
        with docker_errors():
            found = [n for n in self._api.networks(names=[BRIDGE]) if n["Name"] == BRIDGE]
        if not found:
            return None
        if not _keeps_promise(found[0]):
            raise EngineError(
                f"docker network {BRIDGE} was not made by sandboxer with inter-container "
                f"traffic off; fix: docker network rm {BRIDGE} (it is made again on next "
                "use), or set SANDBOXER_DOCKER_BRIDGE to another name"
            )
        return str(found[0]["Id"])

    def _create(self) -> str:
        with docker_errors():
            try:
                created = self._api.create_network(
                    BRIDGE,
                    driver="bridge",
                    options=BRIDGE_OPTIONS,
                    labels={ROLE: "bridge"},
                    check_duplicate=True,
                )
                return str(created["Id"])
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
        # Another process made it between our look and our create: use theirs.
        found = self._find()
        if found is None:
            raise EngineError(f"docker network {BRIDGE}: create said it exists, lookup found none")
        return found
