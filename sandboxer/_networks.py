"""`Network`: named networks whose members reach each other by sandbox name.

A network lives on one engine. Ours carry `ownership_labels()` like sandboxes do; gc
removes one once no sandbox of ours is on it and its owner process has exited, unless
it was made with `keep=True` (as `sandboxer network create` does). One still in use is
never removed: the error names its sandboxes.
"""

from __future__ import annotations

import builtins
import ipaddress
from collections.abc import Mapping, Sequence

import attrs

from ._backend import Backend, LaunchPlan, NetworkInfo, SandboxInfo
from ._engine_objects import available_engines, engine_named, sandboxes_using, user_labels
from ._errors import InvalidSpec, SandboxError, SandboxNotFound, UnsupportedFeature
from ._labels import KEEP, NETWORKS, is_ours, ownership_labels
from ._log import logger, timed
from ._models import check_network_name
from ._subnets import free_subnet, host_routes
from .ownership import labels_owner_alive

# RFC 1918: the only ranges a network of ours may use (is_private also takes link-local,
# "this network" and documentation ranges).
_PRIVATE = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)


class NetworkInUse(SandboxError):
    """A network some sandbox is still on is not removed."""


@attrs.frozen
class Network:
    """A named network on one engine; `labels` include sandboxer's own."""

    name: str
    backend: str
    internal: bool = False
    subnet: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict, eq=False)

    @classmethod
    def create(
        cls,
        name: str,
        *,
        backend: str,
        internal: bool = False,
        subnet: str | None = None,
        labels: Mapping[str, str] | None = None,
        keep: bool = False,
    ) -> Network:
        """Create the network `name` on `backend`, labelled as ours; SandboxExists if
        taken. `internal`: no route out, members reach each other only. `subnet`: an
        IPv4 /16-/28 ("10.140.7.0/24"; default: a free /24 of 10.128.0.0/10). `keep`: gc
        leaves it after this process exits (it still goes when asked)."""
        check_network_name("name", name)
        wanted = user_labels(labels)
        for field, value in (("internal", internal), ("keep", keep)):
            if not isinstance(value, bool):
                raise InvalidSpec(field, f"expected True or False, got {value!r}")
        chosen = None if subnet is None else _check_subnet(subnet)
        engine = engine_named(backend)
        driver = engine.networks()
        taken = [ipaddress.IPv4Network(info.subnet) for info in driver.list() if info.subnet]
        routes = host_routes()
        if chosen is None:
            chosen = free_subnet([str(t) for t in taken], routes)
        else:
            _check_free(chosen, taken, routes)
        own = {**wanted, **ownership_labels(), **({KEEP: "true"} if keep else {})}
        with timed("create_network", backend=backend, network=name):
            info = driver.create(name, internal=internal, subnet=str(chosen), labels=own)
        return cls._of(info)

    @classmethod
    def get(cls, name: str, backend: str) -> Network:
        """The network `name` on `backend`, ours or not; SandboxNotFound if there is none."""
        check_network_name("name", name)
        found = engine_named(backend).networks().inspect(name)
        if found is None:
            raise SandboxNotFound(f"no network {name!r} on {backend}")
        return cls._of(found)

    @classmethod
    def list(
        cls, backend: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Network]:
        """Our networks on `backend` (default: every available engine), carrying `labels`."""
        wanted = user_labels(labels)
        found = [cls._of(info) for info in _networks(backend) if is_ours(info.labels)]
        return [n for n in found if all(n.labels.get(k) == x for k, x in wanted.items())]

    @property
    def ours(self) -> bool:
        return is_ours(self.labels)

    @property
    def kept(self) -> bool:
        return self.labels.get(KEEP) == "true"

    def users(self) -> builtins.list[str]:
        """Names of our sandboxes on this engine that are on this network."""
        return [
            info.name
            for info in sandboxes_using(self.backend, "networks")
            if self.name in on_networks(info)
        ]

    def remove(self) -> None:
        """Remove this network: only one of ours, and only while no sandbox is on it."""
        driver = engine_named(self.backend).networks()
        current = driver.inspect(self.name)
        if current is None:
            return
        if not is_ours(current.labels):
            raise InvalidSpec(
                "network",
                f"{self.backend} network {self.name!r} was not made by sandboxer: "
                "remove it with the engine's own tools",
            )
        users = self.users()
        if users:
            raise NetworkInUse(
                f"network {self.name!r} is in use by sandbox {', '.join(users)} on "
                f"{self.backend}: remove the sandbox first"
            )
        with timed("remove_network", backend=self.backend, network=self.name):
            driver.remove(self.name)

    @classmethod
    def _of(cls, info: NetworkInfo) -> Network:
        return cls(info.name, info.backend, info.internal, info.subnet, dict(info.labels))


def _check_subnet(value: object) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.IPv4Network(value)
    except (ValueError, TypeError):
        raise InvalidSpec(
            "subnet", f"expected an IPv4 network like 10.140.7.0/24, got {value!r}"
        ) from None
    if not 16 <= subnet.prefixlen <= 28 or not any(subnet.subnet_of(p) for p in _PRIVATE):
        raise InvalidSpec(
            "subnet",
            "expected a private IPv4 network (in 10.0.0.0/8, 172.16.0.0/12 or "
            f"192.168.0.0/16) from /16 to /28, got {value!r}",
        )
    return subnet


def _check_free(
    subnet: ipaddress.IPv4Network,
    taken: builtins.list[ipaddress.IPv4Network],
    routes: builtins.list[ipaddress.IPv4Network],
) -> None:
    """A chosen subnet must not shadow one the host routes to (its own links, engines'
    bridges) nor another network of the engine: members would reach, or be, those."""
    for other, what in [(r, "a network this host routes to") for r in routes] + [
        (t, "another network of this engine") for t in taken
    ]:
        if subnet.overlaps(other):
            raise InvalidSpec("subnet", f"{subnet} overlaps {other}, {what}")


def check_networks(backend: Backend, plan: LaunchPlan) -> None:
    """Each network `plan` joins exists on `backend` and is ours (before anything is made)."""
    if not plan.networks:
        return
    driver = backend.networks()
    for index, name in enumerate(plan.networks):
        found = driver.inspect(name)
        field = f"networks[{index}]"
        if found is None:
            raise InvalidSpec(
                field,
                f"no network {name!r} on {backend.name}: create it first "
                f"(sandboxer.Network.create or `sandboxer network create --backend "
                f"{backend.name} {name}`); a network spans one engine",
            )
        if not is_ours(found.labels):
            raise InvalidSpec(
                field,
                f"{backend.name} network {name!r} was not made by sandboxer: its "
                "isolation is unknown, so sandboxes do not join it",
            )


def gc_networks(
    *, backends: Sequence[str] | None = None, dry_run: bool = False
) -> builtins.list[Network]:
    """Remove our networks no sandbox of ours is on whose owner process has exited and
    that were not made to be kept (`sandboxer gc` does this after `gc()`). Never
    anything without our labels. Returns what was (with `dry_run`: would be) removed."""
    removed = []
    for backend in backends if backends is not None else available_engines():
        engine = engine_named(backend)
        try:
            driver = engine.networks()
        except UnsupportedFeature:
            continue
        in_use = {
            name for info in sandboxes_using(backend, "networks") for name in on_networks(info)
        }
        for info in driver.list():
            network = Network._of(info)
            if not network.ours or network.kept or network.name in in_use:
                continue
            if labels_owner_alive(network.labels) is not False:
                continue
            if not dry_run:
                logger.info("gc: removing network %s on %s", network.name, backend)
                driver.remove(network.name)
            removed.append(network)
    return removed


def on_networks(info: SandboxInfo) -> builtins.list[str]:
    return [name for name in info.labels.get(NETWORKS, "").split(",") if name]


def _networks(backend: str | None) -> builtins.list[NetworkInfo]:
    names = [backend] if backend is not None else available_engines()
    found = []
    for name in names:
        try:
            found += engine_named(name).networks().list()
        except UnsupportedFeature:
            if backend is not None:
                raise
    return found
