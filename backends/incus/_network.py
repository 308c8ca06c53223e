"""The networks behind "isolated" and "bridge".

isolated: a private bridge per sandbox with no address on the host side (IPv6 off),
no DHCP and no NAT: the sandbox has an interface but no route to the host, to other
sandboxes or outside. bridge: one shared NAT bridge; each sandbox gets a static
address that LXC configures before init (the hardened sandbox has no capability to
run a DHCP client) and Incus reserves, with IP and MAC filtering against spoofing, and
port isolation: sandboxes on it reach the host and the way out, never each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import quote

from sandboxer.backend import LAUNCH, EngineError, SandboxExists

from ._client import Incus
from ._config import LABEL_PREFIX, Nic, labels_config
from ._errors import incus_errors
from ._sdk import pylxd

BRIDGE = os.environ.get("SANDBOXER_INCUS_BRIDGE", "sandboxerbr0")
BRIDGE_SUBNET = os.environ.get("SANDBOXER_INCUS_BRIDGE_SUBNET", "10.213.0.1/16")
# Never routed: no host address exists on isolated bridges, so any private range does.
ISOLATED_SUBNET = "10.214.0.1/16"
_LAUNCH = LABEL_PREFIX + LAUNCH
_ADDRESS_TRIES = 8
_VANISHED_SECONDS = 10.0
_RETRY_SECONDS = 0.2
T = TypeVar("T")


def isolated_network(sandbox: str) -> str:
    """A per-sandbox network name: interface names stop at 15 characters."""
    return "sbx" + hashlib.sha256(sandbox.encode()).hexdigest()[:12]


def random_address(gateway: str, rng: random.Random) -> str:
    """A host address of the gateway's subnet that is not the gateway."""
    interface = ipaddress.ip_interface(gateway)
    network = interface.network
    while True:
        candidate = network[rng.randrange(2, network.num_addresses - 1)]
        if candidate != interface.ip:
            return f"{candidate}/{network.prefixlen}"


class Networks:
    def __init__(self, incus: Incus) -> None:
        self._incus = incus
        self._subnet: str | None = None
        self._lock = threading.Lock()
        self._rng = random.Random()

    def _config(self, name: str) -> dict[str, str] | None:
        with incus_errors():
            try:
                response = self._incus.api.networks[quote(name, safe="")].get()
            except pylxd.exceptions.NotFound:
                return None
        return dict(response.json()["metadata"].get("config") or {})

    def _create(self, name: str, config: Mapping[str, str]) -> None:
        try:
            create_network(self._incus, name, config)
        except EngineError as exc:
            if "already exists" not in str(exc):
                raise

    def _bridge_subnet(self) -> str:
        """The shared bridge's gateway/prefix, creating the bridge on first use."""
        with self._lock:
            if self._subnet is None:
                config = self._config(BRIDGE)
                if config is None:
                    self._create(
                        BRIDGE,
                        {
                            "ipv4.address": BRIDGE_SUBNET,
                            "ipv4.nat": "true",
                            "ipv6.address": "none",
                            "user.sandboxer.managed": "true",
                        },
                    )
                    config = self._config(BRIDGE) or {}
                subnet = config.get("ipv4.address", "none")
                if subnet in ("none", ""):
                    raise EngineError(
                        f"network {BRIDGE} has no IPv4 subnet; fix: "
                        f"incus network set {BRIDGE} ipv4.address={BRIDGE_SUBNET} ipv4.nat=true"
                    )
                self._subnet = subnet
            return self._subnet

    def bridge_nic(self) -> Callable[[], Nic]:
        """A fresh NIC with a random address each call (the caller retries on conflicts)."""
        subnet = self._bridge_subnet()
        gateway = str(ipaddress.ip_interface(subnet).ip)
        # The shared bridge's ports may reach the host and the way out, not each other.
        return lambda: Nic(
            BRIDGE, random_address(subnet, self._rng), gateway, reserved=True, port_isolation=True
        )

    def create_isolated(self, sandbox: str, labels: Mapping[str, str]) -> Nic:
        """A private bridge, and an address on it that is unlikely to equal a peer's: so
        trying to reach another isolated sandbox really goes nowhere."""
        name = isolated_network(sandbox)
        existing = self._config(name)
        if existing is not None and existing.get(_LAUNCH) != labels.get(LAUNCH):
            # Another sandbox's, or not ours at all: sharing it would join the two.
            raise SandboxExists(f"an Incus network called {name} exists already")
        self._create(
            name,
            {
                "ipv4.address": "none",
                "ipv6.address": "none",
                **labels_config(labels),
                "user.sandboxer.sandbox": sandbox,
            },
        )
        return Nic(name, random_address(ISOLATED_SUBNET, self._rng))

    def remove_isolated(self, sandbox: str, launch: str) -> None:
        """Delete the sandbox's private network if it has one (only this launch's)."""
        name = isolated_network(sandbox)
        config = self._config(name)
        if config is not None and config.get(_LAUNCH) == launch:
            delete_network(self._incus, name)


def vanished_device(exc: BaseException) -> bool:
    """Incus walks a bridge's devices when it changes or deletes it: one going away
    meanwhile (a member's veth whose sandbox was just removed) fails that walk."""
    return "does not exist" in str(exc)


def create_network(incus: Incus, name: str, config: Mapping[str, str]) -> None:
    """Create the bridge `name`, again while a device Incus walks on the way vanishes
    (another sandbox's veth just removed); one half made by this launch goes first."""
    deadline = time.monotonic() + _VANISHED_SECONDS
    while True:
        try:
            with incus_errors():
                incus.api.networks.post(json={"name": name, "type": "bridge", "config": config})
            return
        except EngineError as exc:
            if not vanished_device(exc) or time.monotonic() > deadline:
                raise
            with incus_errors(), contextlib.suppress(pylxd.exceptions.NotFound):
                found = incus.api.networks[quote(name, safe="")].get().json()["metadata"]
                if (found.get("config") or {}).get(_LAUNCH) == config.get(_LAUNCH):
                    delete_network(incus, name)
            time.sleep(_RETRY_SECONDS)


def delete_network(incus: Incus, name: str) -> None:
    """Delete the Incus network `name` (no error if absent), again while a device it
    walks vanishes under it."""
    deadline = time.monotonic() + _VANISHED_SECONDS
    while True:
        try:
            with incus_errors(), contextlib.suppress(pylxd.exceptions.NotFound):
                incus.api.networks[quote(name, safe="")].delete()
            return
        except EngineError as exc:
            if not vanished_device(exc) or time.monotonic() > deadline:
                raise
            time.sleep(_RETRY_SECONDS)


def retry_address_conflicts(attempt: Callable[[], T]) -> T:
    """Run `attempt` again while Incus says a random address is taken."""
    for _ in range(_ADDRESS_TRIES - 1):
        try:
            return attempt()
        except EngineError as exc:
            if "already defined on another NIC" not in str(exc):
                raise
    return attempt()
