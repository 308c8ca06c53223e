"""probe (fast: is the daemon answering?) and diagnose (each prerequisite, with its fix)."""

from __future__ import annotations

import os
import shutil
from typing import Any

from sandboxer.backend import Availability, Check, CheckColumn, SandboxError
from sandboxer.images import BUILTIN_IMAGES, BUSYBOX_FIX

from ._client import Endpoint
from ._images import alias
from ._network import BRIDGE

SETUP = "scripts/setup-engines.sh incus"
START = f"{SETUP} (or: /usr/libexec/incus/incusd --group root &)"
POOL = "SANDBOXER_INCUS_POOL"


def _connect(timeout: float) -> tuple[Availability, Endpoint | None, Any]:
    try:
        endpoint = Endpoint.from_env()
    except SandboxError as exc:
        return Availability(False, str(exc), "fix the SANDBOXER_INCUS_* variables"), None, None
    if endpoint.is_local:
        if not os.path.exists(endpoint.address):
            return Availability(False, f"no Incus socket at {endpoint.address}", START), None, None
        if not os.access(endpoint.address, os.R_OK | os.W_OK):
            return (
                Availability(
                    False,
                    f"no permission on {endpoint.address}",
                    "run as root, or add this user to the incus-admin group "
                    "(usermod -aG incus-admin $USER, then log in again)",
                ),
                endpoint,
                None,
            )
    try:
        client = endpoint.client(timeout=timeout)
    except SandboxError as exc:
        return Availability(False, f"incusd does not answer: {exc}", START), endpoint, None
    if not client.trusted:
        return (
            Availability(
                False,
                f"{endpoint.address} does not trust this client certificate",
                "on the server: incus config trust add-certificate CERT.pem",
            ),
            endpoint,
            client,
        )
    return Availability(True), endpoint, client


def probe() -> Availability:
    availability, _, client = _connect(timeout=1.0)
    if client is not None:
        client.api.session.close()
    return availability


def root_pool(client: Any) -> str | None:
    """The storage pool sandboxes use: $SANDBOXER_INCUS_POOL, else the default profile's."""
    if os.environ.get(POOL):
        return os.environ[POOL]
    devices = client.api.profiles.default.get().json()["metadata"].get("devices") or {}
    for device in devices.values():
        if device.get("type") == "disk" and device.get("path") == "/":
            return str(device.get("pool")) or None
    return None


def _checks(endpoint: Endpoint, client: Any) -> list[Check]:
    checks = []
    pools = [p.rsplit("/", 1)[-1] for p in client.api.storage_pools.get().json()["metadata"]]
    checks.append(
        Check(
            "storage pool present",
            bool(pools),
            ", ".join(pools) or "no storage pool",
            None if pools else "incus storage create default dir",
        )
    )
    pool = root_pool(client)
    checks.append(
        Check(
            "default profile has a root disk",
            pool is not None,
            f"pool {pool}" if pool else "no root disk device in the default profile",
            None if pool else "incus profile device add default root disk path=/ pool=default",
        )
    )
    aliases = {
        a["name"] for a in client.api.images.aliases.get(params={"recursion": 1}).json()["metadata"]
    }
    present = [image for image in BUILTIN_IMAGES if alias(image) in aliases]
    busybox = shutil.which("busybox") is not None
    checks.append(
        Check(
            "built-in images present or buildable",
            bool(present) or busybox,
            f"present: {present}"
            if present
            else (
                "importable on first use from busybox"
                if busybox
                else "no static busybox to build from"
            ),
            None if present or busybox else BUSYBOX_FIX,
        )
    )
    if endpoint.is_local:
        missing = [tool for tool in ("nsenter", "ip") if shutil.which(tool) is None]
        checks.append(
            Check(
                "host tools for the loopback hook",
                not missing,
                f"missing: {missing}" if missing else "nsenter and ip found",
                "apt-get install -y util-linux iproute2" if missing else None,
            )
        )
        dnsmasq = shutil.which("dnsmasq") is not None
        checks.append(
            Check(
                "managed networks possible (isolated, bridge)",
                dnsmasq,
                f"dnsmasq found; the shared bridge is {BRIDGE}" if dnsmasq else "no dnsmasq",
                None if dnsmasq else "apt-get install -y dnsmasq-base",
            )
        )
    return checks


def diagnose() -> list[Check]:
    availability, endpoint, client = _connect(timeout=5.0)
    checks = [
        Check(
            "daemon reachable",
            availability.available,
            availability.reason or (endpoint.address if endpoint else ""),
            availability.fix,
            column=CheckColumn.REACHABLE,
        )
    ]
    if endpoint is not None and endpoint.is_local:
        allowed = os.access(endpoint.address, os.R_OK | os.W_OK)
        checks.append(
            Check(
                "permission on the socket",
                allowed,
                endpoint.address,
                None if allowed else "run as root, or usermod -aG incus-admin $USER",
                column=CheckColumn.PERMISSION,
            )
        )
    if availability.available and endpoint is not None:
        try:
            checks += _checks(endpoint, client)
        except Exception as exc:  # doctor reports, it never raises
            checks.append(Check("daemon answers queries", False, str(exc), START))
        finally:
            client.api.session.close()
    return checks
