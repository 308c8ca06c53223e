"""`LaunchPlan`: a spec and its profile resolved into exactly what a backend creates.

Adapters read nothing else: the plan holds no spec and no profile, so every default is
chosen here, once, and no adapter can reach past it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

from ._labels import (
    CREATED_AT,
    EXEC_USER,
    EXPIRES,
    KEEP,
    NETWORKS,
    VOLUMES,
    new_name,
    ownership_labels,
)
from ._models import Mount, PortMapping, Requirements, SandboxSpec
from ._ports import assign_host_ports
from ._seccomp import SeccompPolicy, Target
from ._vocabulary import Control, NetworkMode, PullPolicy


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


def _frozen_extras(extras: Mapping[str, Mapping[str, str]]) -> Mapping[str, Mapping[str, str]]:
    return MappingProxyType({engine: _frozen(keys) for engine, keys in extras.items()})


@attrs.frozen
class Tmpfs:
    """A writable tmpfs the profile or the spec asks for, with the one option set every
    engine uses (nosuid,nodev always; the size bounds what it holds)."""

    path: str
    size: int  # bytes
    mode: int = 0o1777

    @property
    def options(self) -> str:
        return f"rw,nosuid,nodev,size={self.size},mode={self.mode:o}"


@attrs.frozen
class VolumeMount:
    """A named engine volume mounted at `target` (launch made sure it exists)."""

    name: str
    target: str
    read_only: bool = False


@attrs.frozen(kw_only=True)
class Relaxed:
    """A control the spec itself relaxed, and why: reported not enforced, never refused."""

    control: Control
    reason: str


@attrs.frozen(kw_only=True)
class LaunchPlan:
    """A validated spec with every default resolved: what a backend creates, exactly."""

    name: str
    # What the sandbox calls itself (an RFC 1123 host name); its name unless the spec chose.
    hostname: str = attrs.field(default=attrs.Factory(lambda plan: plan.name, takes_self=True))
    labels: Mapping[str, str] = attrs.field(converter=_frozen)
    image: str
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    pull: PullPolicy = attrs.field(default=PullPolicy.MISSING, converter=PullPolicy)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen)
    workdir: str | None = None
    user: str | None = None
    mounts: tuple[Mount, ...] = ()  # host paths only: volumes are in `volumes`
    volumes: tuple[VolumeMount, ...] = ()
    ports: tuple[PortMapping, ...] = ()  # host ports all chosen
    network: NetworkMode = attrs.field(converter=NetworkMode)
    # Named networks it joins besides its default link (checked to exist and be ours).
    networks: tuple[str, ...] = ()
    # Capability names upper case, without CAP_; "ALL" in cap_drop drops every one.
    cap_drop: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()
    tmpfs: tuple[Tmpfs, ...] = ()
    read_only_root: bool = False
    no_new_privileges: bool = False
    seccomp: SeccompPolicy | None = None
    # What the policy's includes/excludes see (its kernel left for the engine to fill).
    seccomp_target: Target = attrs.field(factory=Target)
    # Each sandbox its own host id range, where the engine maps ids per sandbox.
    isolated_ids: bool = False
    cpus: float | None = None
    memory: int | None = None  # bytes
    pids: int | None = None
    requirements: Requirements = attrs.field(factory=Requirements)
    # The controls the profile asks for, those the caller accepts unenforced, and those
    # the spec relaxed itself.
    controls: tuple[Control, ...] = ()
    allow_unenforced: frozenset[Control] = frozenset()
    relaxed: tuple[Relaxed, ...] = ()
    profile_name: str = ""
    # The OCI runtime (`RUNTIMES`) the engine runs it under; None: the engine's default.
    runtime: str | None = None
    # Per-engine extras (engine -> key -> value), applied only where no control sets the key.
    extras: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict, converter=_frozen_extras)


def make_plan(spec: SandboxSpec, *, choose_ports: bool = True) -> LaunchPlan:
    """Resolve every default of `spec`: name, labels, network, host ports, user, limits.

    `choose_ports=False` leaves host ports as asked (for a plan that is only checked).
    """
    profile = spec.profile
    res = spec.resources
    user = spec.user if spec.user is not None else profile.user
    labels = {**spec.labels, **ownership_labels()}
    if user is not None:
        labels[EXEC_USER] = user
    if spec.keep:
        labels[KEEP] = "true"
    volumes = tuple(VolumeMount(m.volume, m.target, m.read_only) for m in spec.mounts if m.volume)
    if volumes:
        # Which volumes it holds, so that removing one in use names this sandbox.
        labels[VOLUMES] = ",".join(sorted({v.name for v in volumes}))
    if spec.networks:
        # Which networks it is on, so that removing one in use names this sandbox.
        labels[NETWORKS] = ",".join(spec.networks)
    if spec.max_lifetime is not None:
        labels[EXPIRES] = f"{float(labels[CREATED_AT]) + spec.max_lifetime:.3f}"
    network = spec.effective_network
    name = spec.name or new_name()
    return LaunchPlan(
        name=name,
        hostname=spec.hostname or name,
        labels=labels,
        image=spec.image,
        command=spec.command,
        entrypoint=spec.entrypoint,
        pull=spec.pull,
        env=spec.env,
        workdir=spec.workdir,
        user=user,
        mounts=tuple(m for m in spec.mounts if not m.volume and not m.tmpfs),
        volumes=volumes,
        ports=assign_host_ports(spec.ports) if choose_ports else spec.ports,
        network=network,
        networks=spec.networks,
        cap_drop=profile.cap_drop,
        cap_add=profile.cap_add,
        tmpfs=_tmpfs(spec),
        read_only_root=profile.read_only_root,
        no_new_privileges=profile.no_new_privileges,
        seccomp=profile.seccomp,
        seccomp_target=profile.seccomp_target(),
        isolated_ids=profile.isolated_ids,
        cpus=res.cpus if res.cpus is not None else profile.cpus,
        memory=res.memory if res.memory is not None else profile.memory,
        pids=res.pids if res.pids is not None else profile.pids,
        requirements=spec.requirements,
        controls=profile.controls(),
        allow_unenforced=spec.allow_unenforced,
        relaxed=_relaxed(spec, network, user),
        profile_name=profile.name,
        runtime=spec.runtime if spec.runtime is not None else profile.runtime,
        extras=profile.extras,
    )


def _tmpfs(spec: SandboxSpec) -> tuple[Tmpfs, ...]:
    """The profile's tmpfs paths, then the spec's; a spec's at the same path replaces the
    profile's (as `docker run --tmpfs /tmp` does)."""
    found = {path: Tmpfs(path, size) for path, size in spec.profile.tmpfs.items()}
    for mount in spec.mounts:
        if mount.tmpfs and mount.size is not None and mount.mode is not None:
            found[mount.target] = Tmpfs(mount.target, mount.size, mount.mode)
    return tuple(found.values())


def _relaxed(spec: SandboxSpec, network: NetworkMode, user: str | None) -> tuple[Relaxed, ...]:
    """Controls the spec itself chose to relax (e.g. ports need a network): the caller
    asked for it explicitly, so they are reported as not enforced, yet not refused."""
    profile = spec.profile
    controls = profile.controls()
    relaxed = []
    if "network" in controls and network != profile.network:
        reason = f"relaxed by the spec: network {network!r} (profile: {profile.network!r})"
        relaxed.append(Relaxed(control=Control.NETWORK, reason=reason))
    if "non_root_user" in controls and _is_root(user):
        reason = f"relaxed by the spec: user {user!r} is root"
        relaxed.append(Relaxed(control=Control.NON_ROOT_USER, reason=reason))
    return tuple(relaxed)


def _is_root(user: str | None) -> bool:
    """Whether `user` ('name', 'uid' or 'uid:gid') names the root user: "root", or uid 0
    however it is spelled ("00" is uid 0 to every engine)."""
    if user is None:
        return False
    name = user.split(":", 1)[0].strip()
    return name == "root" or (name.isascii() and name.isdigit() and int(name) == 0)
