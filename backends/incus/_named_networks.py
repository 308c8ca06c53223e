"""Named networks: a managed Incus bridge each, and DNS names for their members.

Incus interface names stop at 15 characters, so the bridge is named after a hash of the
sandboxer name (prefix "sbi" for internal networks, which the host's bridge guard
covers, "sbn" for the others) and the sandboxer name is kept in the network's config.

Members have static addresses (no DHCP client in a hardened sandbox), which Incus's
dnsmasq never learns names for: every member gets a `host-record` line in the network's
raw.dnsmasq, under its sandbox name only (unique per engine: a host name could be a
peer's name). The records live as JSON in the network's config (who, which launch, which
address) and raw.dnsmasq is made from them. Changes are serialised by a lock file per
network on this host, and each is a PATCH with the ETag of what was read (If-Match), so
concurrent launches lose no record and never pick one address twice (measured: 8 at
once). No network's dnsmasq reads the host's /etc/hosts (`no-hosts`): the host's names
are not the members' business. An internal network's dnsmasq forwards nothing upstream
(`no-resolv`): DNS is no way out either.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Set
from typing import Any, TypeVar
from urllib.parse import quote

from sandboxer.backend import (
    INTERNAL_BRIDGE_PREFIX,
    LAUNCH,
    NAMED_BRIDGE_PREFIX,
    EngineError,
    LaunchPlan,
    NetworkDriver,
    NetworkInfo,
    SandboxExists,
    SandboxInfo,
    SandboxState,
    gateway,
    guard_network_bridges,
    is_ours,
    member_address,
)
from sandboxer.images.store import default_store

from ._client import Incus
from ._config import Named, Nic, labels_config, labels_from_config
from ._errors import incus_errors
from ._network import create_network, delete_network, vanished_device
from ._sdk import pylxd

NAME_KEY = "user.sandboxer.network"  # the sandboxer name of the network
# {sandbox: {"launch", "address", "names", "labels"}}
RECORDS_KEY = "user.sandboxer.records"
_OWN_LABELS = tuple(key.removeprefix("user.") for key in (NAME_KEY, RECORDS_KEY))
# Names dnsmasq and /etc/hosts take as they are (a sandbox's name and host name).
_DNS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")
_TRIES = 20
_STALE = 412  # Precondition Failed: the ETag no longer matches
_RETRY_SECONDS = 0.2
T = TypeVar("T")
Records = dict[str, dict[str, Any]]


def engine_name(name: str, internal: bool) -> str:
    """The bridge's name: the hash is salted, so another engine's bridge for a network of
    the same name (its own, named alike) is never this one's host interface."""
    prefix = INTERNAL_BRIDGE_PREFIX if internal else NAMED_BRIDGE_PREFIX
    return prefix + hashlib.sha256(f"incus:{name}".encode()).hexdigest()[:12]


def records_of(config: Mapping[str, str]) -> Records:
    """The records in a network's config; what is garbled (anyone may edit it) is left out."""
    try:
        found = json.loads(config.get(RECORDS_KEY) or "{}")
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {
        sandbox: {**record, "names": [n for n in names if _DNS_NAME.fullmatch(str(n))]}
        for sandbox, record in found.items()
        if isinstance(record, dict)
        and _is_address(record.get("address"))
        and isinstance(names := record.get("names", []), list)
    }


def _is_address(value: object) -> bool:
    try:
        ipaddress.IPv4Address(str(value))
    except ValueError:
        return False
    return True


def dnsmasq_lines(internal: bool, records: Records) -> str:
    """raw.dnsmasq: a host-record per member, none of the host's names; no upstream for
    an internal network."""
    lines = ["no-hosts", *(["no-resolv"] if internal else [])]
    for sandbox in sorted(records):
        record = records[sandbox]
        if record["names"]:
            lines.append(f"host-record={','.join(record['names'])},{record['address']}")
    return "\n".join(lines)


def hosts_lines(records: Records, sandbox: str) -> list[str]:
    """/etc/hosts lines for the members other than `sandbox`."""
    return [
        f"{record['address']} {' '.join(record['names'])}"
        for name, record in sorted(records.items())
        if name != sandbox and record["names"]
    ]


class IncusNetworks(NetworkDriver):
    def __init__(self, incus: Incus) -> None:
        self._incus = incus

    def _get(self, engine: str) -> tuple[dict[str, Any], str] | None:
        """The network's metadata and ETag, or None."""
        with incus_errors():
            try:
                response = self._incus.api.networks[quote(engine, safe="")].get()
            except pylxd.exceptions.NotFound:
                return None
        return response.json()["metadata"], response.headers.get("ETag", "")

    def _find(self, name: str) -> tuple[str, dict[str, Any], str] | None:
        """(engine name, metadata, ETag) of the network sandboxer calls `name`."""
        for internal in (True, False):
            engine = engine_name(name, internal)
            found = self._get(engine)
            if found is not None and (found[0].get("config") or {}).get(NAME_KEY) == name:
                return engine, *found
        return None

    @staticmethod
    def _info(metadata: Mapping[str, Any]) -> NetworkInfo:
        config = metadata.get("config") or {}
        labels = {k: v for k, v in labels_from_config(config).items() if k not in _OWN_LABELS}
        try:  # one made by hand may have no subnet ("none"), or none at all
            subnet = str(ipaddress.ip_interface(config.get("ipv4.address", "")).network)
        except ValueError:
            subnet = ""
        internal = str(metadata["name"]).startswith(INTERNAL_BRIDGE_PREFIX)
        return NetworkInfo("incus", config[NAME_KEY], internal, subnet, labels)

    def create(
        self, name: str, *, internal: bool, subnet: str, labels: Mapping[str, str]
    ) -> NetworkInfo:
        if self._find(name) is not None:
            raise SandboxExists(f"an incus network called {name!r} exists already")
        guard_network_bridges()
        engine = engine_name(name, internal)
        config = {
            **labels_config(labels),
            NAME_KEY: name,
            "ipv4.address": str(gateway(subnet)),
            "ipv4.nat": "false" if internal else "true",
            # Every member's address is static: no lease to collide with one.
            "ipv4.dhcp": "false",
            "ipv6.address": "none",
            "raw.dnsmasq": dnsmasq_lines(internal, {}),
        }
        try:
            create_network(self._incus, engine, config)
        except EngineError as exc:
            if "already exists" in str(exc):
                raise SandboxExists(f"an incus network {engine} exists already") from exc
            raise
        return NetworkInfo("incus", name, internal, str(ipaddress.ip_network(subnet)), labels)

    def inspect(self, name: str) -> NetworkInfo | None:
        found = self._find(name)
        return self._info(found[1]) if found is not None else None

    def list(self) -> list[NetworkInfo]:
        with incus_errors():
            found = self._incus.api.networks.get(params={"recursion": 1}).json()["metadata"]
        return [self._info(n) for n in found if NAME_KEY in (n.get("config") or {})]

    def remove(self, name: str) -> None:
        found = self._find(name)
        if found is None or not is_ours(labels_from_config(found[1].get("config") or {})):
            return  # never anyone else's
        delete_network(self._incus, found[0])

    # members -------------------------------------------------------------------------
    def exists(self, sandbox: str) -> bool:
        """Whether an instance called `sandbox` is there, anyone's."""
        with incus_errors():
            try:
                self._incus.api.instances[quote(sandbox, safe="")].get()
            except pylxd.exceptions.NotFound:
                return False
        return True

    def _update(self, engine: str, change: Callable[[Records], T]) -> T:
        """Apply `change` to the records of network `engine` and write them back. One
        change at a time on this host (Incus checks the ETag before it applies a change,
        not atomically with it, and two bridge setups at once fail); again from a fresh
        read whenever someone else (another host) wrote in between."""
        with _host_lock(engine):
            return self._write(engine, change)

    def _write(self, engine: str, change: Callable[[Records], T]) -> T:
        for _ in range(_TRIES):
            found = self._get(engine)
            if found is None:
                raise EngineError(f"incus network {engine} is gone")
            metadata, etag = found
            records = records_of(metadata.get("config") or {})
            result = change(records)
            internal = engine.startswith(INTERNAL_BRIDGE_PREFIX)
            config = {
                RECORDS_KEY: json.dumps(records, sort_keys=True),
                "raw.dnsmasq": dnsmasq_lines(internal, records),
            }
            with incus_errors():
                try:
                    self._incus.api.networks[engine].patch(
                        json={"config": config}, headers={"If-Match": etag}
                    )
                    return result
                except pylxd.exceptions.LXDAPIException as exc:
                    if _busy(exc):
                        time.sleep(_RETRY_SECONDS)
                    elif exc.response is None or exc.response.status_code != _STALE:
                        raise
        raise EngineError(f"incus network {engine} kept changing: its DNS records were not set")

    def join(self, plan: LaunchPlan) -> Named:
        """A NIC with a fresh address on each of `plan.networks` (eth1, eth2, ...), each
        recorded in its network's DNS; the default route goes via the first non-internal
        one unless the default link ("bridge") has it."""
        nics: list[Nic] = []
        hosts: list[str] = []
        nameservers: list[tuple[bool, str]] = []
        route = plan.network != "bridge"
        for index, network in enumerate(plan.networks, start=1):
            found = self._find(network)
            if found is None:
                raise EngineError(f"incus network {network!r} is gone")
            engine, metadata, _ = found
            subnet = str(self._info(metadata).subnet)

            def claim(records: Records, subnet: str = subnet) -> list[str]:
                launch = plan.labels.get(LAUNCH, "")
                held = records.get(plan.name)
                # A live namesake's record stays; a gone sandbox's record may go.
                if held and held.get("launch") != launch and self.exists(plan.name):
                    raise SandboxExists(f"an incus instance called {plan.name!r} exists")
                records.pop(plan.name, None)
                taken = [str(r["address"]) for r in records.values()]
                address = str(member_address(subnet, taken).ip)
                records[plan.name] = {
                    "launch": launch,
                    "address": address,
                    "names": [plan.name],  # never the host name: it may be a peer's name
                    "labels": dict(plan.labels),  # for gc, once the sandbox is gone
                }
                return [address, *hosts_lines(records, plan.name)]

            address, *peers = self._update(engine, claim)
            internal = engine.startswith(INTERNAL_BRIDGE_PREFIX)
            way_out = str(gateway(subnet).ip)
            nics.append(
                Nic(
                    engine,
                    f"{address}/{ipaddress.ip_network(subnet).prefixlen}",
                    way_out if route and not internal else None,
                    reserved=True,
                    device=f"eth{index}",
                )
            )
            route = route and internal
            hosts += peers
            nameservers.append((not internal, way_out))
        # Internal networks' dnsmasq refuse other names, so the resolver asks the next.
        return Named(tuple(nics), tuple(hosts), tuple(s for _, s in sorted(nameservers)))

    def leave(self, sandbox: str, launch: str) -> None:
        """Drop the DNS records of `sandbox` made by `launch` from every named network."""
        with incus_errors():
            found = self._incus.api.networks.get(params={"recursion": 1}).json()["metadata"]
        for network in found:
            record = records_of(network.get("config") or {}).get(sandbox) or {}
            if NAME_KEY in (network.get("config") or {}) and record.get("launch") == launch:
                self._update(network["name"], lambda records: _drop(records, sandbox, launch))


def gone_members(config: Mapping[str, str], live: Set[str | None]) -> list[SandboxInfo]:
    """The records of a named network's config whose launch no sandbox carries now: a
    launch that failed past its cleanup, or a sandbox deleted behind sandboxer's back."""
    return [
        SandboxInfo("incus", sandbox, sandbox, SandboxState.DESTROYED, record.get("labels", {}))
        for sandbox, record in records_of(config).items()
        if record.get("launch") not in live
    ]


@contextlib.contextmanager
def _host_lock(engine: str) -> Iterator[None]:
    """An exclusive lock on this host for network `engine`'s records."""
    locks = default_store().root / "locks"
    locks.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(locks / f"incus-network-{engine}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _busy(exc: pylxd.exceptions.LXDAPIException) -> bool:
    """Incus restarts dnsmasq on each change; right after the last one the old process
    may still hold the port, and Incus puts the old config back: try again. So too
    when a device the bridge's restart walks has just vanished."""
    return "exited prematurely" in str(exc) or vanished_device(exc)


def _drop(records: Records, sandbox: str, launch: str) -> None:
    """Forget `sandbox`'s record if `launch` made it (a namesake's stays)."""
    if records.get(sandbox, {}).get("launch") == launch:
        del records[sandbox]
