"""Frozen value classes of the public API, validated at construction.

Every check here runs before any engine is touched; a failure is an `InvalidSpec`
that names the field.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs

from ._errors import CommandFailed, InvalidSpec
from ._profiles import CONTROLS, Profile, check_runtime, load_profile
from ._units import parse_size
from ._vocabulary import (
    Control,
    Isolation,
    Kind,
    NetworkMode,
    Protocol,
    PullPolicy,
    member,
    optional_member,
)
from .images.disk import DISK_IMAGE_SUFFIXES, is_disk_image, looks_like_disk_image
from .images.reference import parse_reference
from .images.rootfs import is_builtin

KINDS = tuple(Kind)
# Ordered weakest to strongest: shared kernel, shared kernel with a user namespace, own kernel.
ISOLATION_LEVELS = tuple(Isolation)
RESERVED_LABEL_PREFIX = "sandboxer."
# Sockets that hand whoever reaches them control of an engine (and so of the host).
ENGINE_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/lib/incus/unix.socket",
    "/var/lib/lxd/unix.socket",
    "/var/snap/lxd/common/lxd/unix.socket",
    "/run/libvirt/libvirt-sock",
    "/var/run/libvirt/libvirt-sock",
    "/run/podman/podman.sock",
)
_FORBIDDEN_GUEST_DIRS = ("/proc", "/sys")
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9-]{0,62}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Docker's volume names, bounded so every engine (Incus, a host directory) takes them.
VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
# RFC 1123 host names: dot-separated labels of letters, digits and inner '-', 1-63 each.
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_HOSTNAME_MAX = 253
# 'name', 'uid', 'name:group' or 'uid:gid': no spaces, no control characters, no leading '-'.
USER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?")


def _fail(field: str, message: str) -> InvalidSpec:
    return InvalidSpec(field, message)


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _guest_path(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(field, f"expected a non-empty path, got {value!r}")
    if "\0" in value:
        raise _fail(field, "contains a NUL byte")
    if not value.startswith("/"):
        raise _fail(field, f"must be an absolute path inside the sandbox, got {value!r}")
    normal = os.path.normpath(value)
    return "/" + normal.lstrip("/")


def _file_identity(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _protocol(value: str) -> Protocol:
    return member(Protocol, "PortMapping.protocol", value)


def _kind(value: str | None) -> Kind | None:
    return optional_member(Kind, "Requirements.kind", value)


def _isolation(value: str | None) -> Isolation | None:
    return optional_member(Isolation, "Requirements.isolation", value)


def _network(value: str | None) -> NetworkMode | None:
    return optional_member(NetworkMode, "network", value)


# A tmpfs Mount's defaults: Docker's mode; a bound Docker lacks (its tmpfs is unbounded),
# the size of the hardened profile's /tmp. Its pages count towards the memory limit.
TMPFS_SIZE = 64 * 1024**2
TMPFS_MODE = 0o1777


def _tmpfs_size(value: int | str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise _fail("Mount.size", str(exc)) from None


@attrs.frozen
class Mount:
    """A host directory or file shared into the sandbox at `target`, or (`tmpfs=True`)
    a fresh in-memory file system there, bounded by `size` (default 64 MiB) with the
    permission bits `mode` (default 0o1777, as Docker's `--tmpfs`), always nosuid,nodev.

    `source` is resolved once, here, to the real path the deny lists check; engines mount
    that path, and launch refuses it if it no longer leads to the same file (see
    `check_mount_sources`), so a symlink swapped in later cannot redirect the mount.
    """

    source: str = ""
    target: str = ""
    read_only: bool = False
    # The name of a `sandboxer.Volume` mounted at `target`, in place of a host source.
    volume: str | None = attrs.field(default=None, kw_only=True)
    tmpfs: bool = attrs.field(default=False, kw_only=True)
    size: int | None = attrs.field(default=None, kw_only=True, converter=_tmpfs_size)
    mode: int | None = attrs.field(default=None, kw_only=True)
    # (device, inode) of the source when it was checked.
    identity: tuple[int, int] = attrs.field(init=False, eq=False, repr=False, default=(0, 0))

    def __attrs_post_init__(self) -> None:
        if self.tmpfs is not False:
            self._check_tmpfs()
        else:
            for field in ("size", "mode"):
                if getattr(self, field) is not None:
                    raise _fail(f"Mount.{field}", "applies to a tmpfs mount only (tmpfs=True)")
            if self.volume is not None:
                self._check_volume()
            else:
                self._check_source()
        target = _guest_path("Mount.target", self.target)
        if target == "/":
            raise _fail("Mount.target", "cannot mount over the sandbox's root '/'")
        if any(_is_under(target, d) for d in _FORBIDDEN_GUEST_DIRS):
            raise _fail("Mount.target", f"cannot mount over kernel file systems: {target}")
        object.__setattr__(self, "target", target)

    def _check_source(self) -> None:
        if not isinstance(self.source, str | os.PathLike) or not str(self.source):
            raise _fail("Mount.source", f"expected a host path, got {self.source!r}")
        source = os.path.realpath(os.fspath(self.source))
        try:
            identity = _file_identity(source)
        except OSError:
            raise _fail("Mount.source", f"does not exist on the host: {source}") from None
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "source", source)

    def _check_volume(self) -> None:
        check_volume_name("Mount.volume", self.volume)
        if self.source:
            raise _fail("Mount.source", "a volume mount has no host source")

    def _check_tmpfs(self) -> None:
        if self.tmpfs is not True:
            raise _fail("Mount.tmpfs", f"expected True or False, got {self.tmpfs!r}")
        if self.source or self.volume is not None:
            raise _fail("Mount.source", "a tmpfs mount has no source and no volume")
        if self.read_only:
            raise _fail("Mount.read_only", "a read-only tmpfs could only ever be empty")
        mode = TMPFS_MODE if self.mode is None else self.mode
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise _fail("Mount.mode", f"expected permission bits in 0-0o7777, got {mode!r}")
        object.__setattr__(self, "mode", mode)
        if self.size is None:
            object.__setattr__(self, "size", TMPFS_SIZE)

    @classmethod
    def parse(cls, text: str) -> Mount:
        """`SRC:DST[:ro|rw]`, as in `docker run -v`: SRC is a host path when it holds a
        '/' or starts with '.' or '~' (Docker's rule), else a volume's name."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise _fail("mounts", f"expected SRC:DST[:ro|rw], got {text!r}")
        source, target, read_only = parts[0], parts[1], parts[2:] == ["ro"]
        if "/" in source or source.startswith((".", "~")):
            return cls(source=os.path.expanduser(source), target=target, read_only=read_only)
        return cls(volume=source, target=target, read_only=read_only)

    @classmethod
    def parse_tmpfs(cls, text: str) -> Mount:
        """`/path[:size=64m,mode=1777]`, as in `docker run --tmpfs` (mode in octal)."""
        target, _, options = text.partition(":")
        fields: dict[str, Any] = {}
        for option in filter(None, options.split(",")):
            key, _, value = option.partition("=")
            if key == "size":
                fields["size"] = value
            elif key == "mode":
                try:
                    fields["mode"] = int(value, 8)
                except ValueError:
                    raise _fail(
                        "Mount.mode", f"expected octal bits such as 1777, got {value!r}"
                    ) from None
            else:
                raise _fail("tmpfs", f"expected size=SIZE or mode=OCTAL options, got {option!r}")
        return cls(target=target, tmpfs=True, **fields)


def _check_name(kind: str, field: str, name: object) -> str:
    """`name` if it is a `kind` name every engine takes (Docker's volume rule, at most 63)."""
    if not isinstance(name, str) or not VOLUME_NAME.fullmatch(name):
        raise _fail(
            field,
            f"expected a {kind} name: a letter or digit, then letters, digits, '_', '.' "
            f"or '-' (at most 63 in all), got {name!r}",
        )
    return name


def check_volume_name(field: str, name: object) -> str:
    return _check_name("volume", field, name)


def check_network_name(field: str, name: object) -> str:
    return _check_name("network", field, name)


def _networks(value: Sequence[Any]) -> tuple[str, ...]:
    """Network names, from names or `Network` objects (anything with a `name`)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise _fail("networks", f"expected a list of network names, got {value!r}")
    names = tuple(
        check_network_name(f"networks[{index}]", getattr(item, "name", item))
        for index, item in enumerate(value)
    )
    for index, name in enumerate(names):
        if name in names[:index]:
            raise _fail(f"networks[{index}]", f"{name!r} is listed twice")
    return names


@attrs.frozen
class PortMapping:
    """A sandbox port published on the host; host_port None picks a free one."""

    guest_port: int
    host_port: int | None = None
    host_ip: str = "127.0.0.1"
    protocol: Protocol = attrs.field(default=Protocol.TCP, converter=_protocol)

    def __attrs_post_init__(self) -> None:
        for field in ("guest_port", "host_port"):
            port = getattr(self, field)
            if port is None and field == "host_port":
                continue
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise _fail(f"PortMapping.{field}", f"must be a port in 1-65535, got {port!r}")
        try:
            ipaddress.ip_address(self.host_ip)
        except ValueError:
            raise _fail("PortMapping.host_ip", f"not an IP address: {self.host_ip!r}") from None

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        """`[IP:]HOST:GUEST[/udp]` or `GUEST`, as in `docker run -p` (empty HOST picks one)."""
        spec, _, protocol = text.partition("/")
        parts = spec.rsplit(":", 2)
        try:
            numbers = [int(p) if p else None for p in parts[-2:]]
        except ValueError:
            raise _fail("ports", f"expected [IP:]HOST:GUEST, got {text!r}") from None
        guest = numbers[-1]
        if guest is None:
            raise _fail("ports", f"expected [IP:]HOST:GUEST, got {text!r}")
        return cls(
            guest_port=guest,
            host_port=numbers[0] if len(parts) >= 2 else None,
            host_ip=parts[0] if len(parts) == 3 else "127.0.0.1",
            protocol=protocol or "tcp",
        )


def _optional_size(value: int | str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise _fail("Resources.memory", str(exc)) from None


@attrs.frozen
class Resources:
    """Limits; None takes the profile's value."""

    cpus: float | None = None
    memory: int | None = attrs.field(default=None, converter=_optional_size)
    pids: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.cpus is not None and (
            isinstance(self.cpus, bool) or not isinstance(self.cpus, int | float) or self.cpus <= 0
        ):
            raise _fail("Resources.cpus", f"must be a positive number, got {self.cpus!r}")
        if self.pids is not None and (
            isinstance(self.pids, bool) or not isinstance(self.pids, int) or self.pids < 1
        ):
            raise _fail("Resources.pids", f"must be a positive integer, got {self.pids!r}")


@attrs.frozen
class Requirements:
    """What the task needs; the selector picks an engine from it."""

    kind: Kind | None = attrs.field(default=None, converter=_kind)
    isolation: Isolation | None = attrs.field(
        default=None,
        converter=_isolation,
    )
    init: bool = False
    custom_kernel: bool = False
    nested: bool = False
    max_start_seconds: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.max_start_seconds is not None and not self.max_start_seconds > 0:
            raise _fail(
                "Requirements.max_start_seconds",
                f"must be positive, got {self.max_start_seconds!r}",
            )


def _build(cls: type[Any], field: str, value: Any) -> Any:
    """An instance of `cls` from an instance or a mapping of its fields."""
    if isinstance(value, Mapping):
        try:
            return cls(**value)
        except TypeError as exc:
            raise _fail(field, str(exc)) from None
    if not isinstance(value, cls):
        raise _fail(field, f"expected {cls.__name__} or a dict, got {value!r}")
    return value


def _build_all(cls: type[Any], field: str, values: Any) -> tuple[Any, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | set | frozenset):
        raise _fail(field, f"expected a list, got {values!r}")
    return tuple(_build(cls, field, v) for v in values)


def _string_map(field: str, value: Mapping[str, str] | None) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise _fail(field, f"expected a dict of strings, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise _fail(f"{field}[{key!r}]", "keys and values must be strings")
        if "\0" in key or "\0" in item:
            raise _fail(f"{field}[{key!r}]", "contains a NUL byte")
    return MappingProxyType(dict(value))


# Named converters: attrs (and mypy's attrs plugin) see each field's accepted input.
def _env(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return _string_map("env", value)


def _labels(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return _string_map("labels", value)


def _mounts(value: Sequence[Mount | Mapping[str, Any]]) -> tuple[Mount, ...]:
    return _build_all(Mount, "mounts", value)


def _ports(value: Sequence[PortMapping | Mapping[str, Any]]) -> tuple[PortMapping, ...]:
    return _build_all(PortMapping, "ports", value)


def _resources(value: Resources | Mapping[str, Any]) -> Resources:
    built: Resources = _build(Resources, "resources", value)
    return built


def _requirements(value: Requirements | Mapping[str, Any]) -> Requirements:
    built: Requirements = _build(Requirements, "requirements", value)
    return built


def _argv(field: str, value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    argv = shlex.split(value) if isinstance(value, str) else value
    if not isinstance(argv, Sequence) or not all(isinstance(a, str) for a in argv):
        raise _fail(field, f"expected a list of strings, got {value!r}")
    if any("\0" in a for a in argv):
        raise _fail(field, "contains a NUL byte")
    return tuple(argv)


def _command(value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    argv = _argv("command", value)
    if argv == ():
        raise _fail("command", "must not be empty (use None for the image's default)")
    return argv


def _entrypoint(value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    # Empty is meaningful: it clears the image's Entrypoint, as `--entrypoint ""` does.
    return _argv("entrypoint", value)


def _pull(value: str) -> PullPolicy:
    return member(PullPolicy, "pull", value)


def _profile(value: str | Path | Profile) -> Profile:
    return load_profile(value)


def _runtime(value: str | None) -> str | None:
    return check_runtime("runtime", value)


def _allow_unenforced(value: Sequence[str] | None) -> frozenset[Control]:
    controls = frozenset(value or ())
    unknown = sorted(controls - set(CONTROLS))
    if unknown:
        raise _fail("allow_unenforced", f"unknown controls {unknown}; known: {list(CONTROLS)}")
    return frozenset(Control(c) for c in controls)


def _lifetime(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise _fail("max_lifetime", f"expected positive seconds or a timedelta, got {value!r}")
    if not math.isfinite(seconds):
        raise _fail("max_lifetime", f"must be finite, got {value!r}")
    return float(seconds)


@attrs.frozen
class SandboxSpec:
    """Everything needed to launch one sandbox, on any backend."""

    image: str = "sandboxer/minimal"
    # None: the image's own (Entrypoint + Cmd, as Docker runs them; nothing: idle).
    command: tuple[str, ...] | None = attrs.field(default=None, converter=_command)
    # Replaces the image's Entrypoint (and drops its Cmd); () clears it.
    entrypoint: tuple[str, ...] | None = attrs.field(default=None, converter=_entrypoint)
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_env)
    workdir: str | None = None
    user: str | None = None
    name: str | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_labels)
    mounts: tuple[Mount, ...] = attrs.field(factory=tuple, converter=_mounts)
    ports: tuple[PortMapping, ...] = attrs.field(factory=tuple, converter=_ports)
    resources: Resources = attrs.field(factory=Resources, converter=_resources)
    profile: Profile = attrs.field(factory=lambda: load_profile("hardened"), converter=_profile)
    network: NetworkMode | None = attrs.field(default=None, converter=_network)
    # Named networks the sandbox also joins (`Network`s or their names), all on the
    # engine it runs on; their members reach it by its name. `network` stays the mode of
    # its own default link ("none": on these networks only).
    networks: tuple[str, ...] = attrs.field(factory=tuple, converter=_networks)
    requirements: Requirements = attrs.field(factory=Requirements, converter=_requirements)
    backend: str | None = None
    # The OCI runtime of an app container ("runc", "crun", "runsc", "kata"), as
    # `docker run --runtime`; None: the profile's, else the engine's default.
    runtime: str | None = attrs.field(default=None, converter=_runtime)
    # Profile controls the caller accepts to go unenforced on the chosen backend.
    allow_unenforced: frozenset[Control] = attrs.field(
        factory=frozenset, converter=_allow_unenforced
    )
    # Outlives its owner: not destroyed at the launching process's exit, and kept by gc
    # unless asked (`run --keep`); destroy() still removes it.
    keep: bool = False
    # When the image is fetched from its registry: "missing", "always" or "never".
    pull: PullPolicy = attrs.field(default=PullPolicy.MISSING, converter=_pull)
    # The host name the sandbox sees (uname, `hostname`); None: its name.
    hostname: str | None = None
    # Also publish every port the image exposes (its ExposedPorts) on a free loopback
    # port, as `docker run -P` does; the spec's own `ports` mappings come first.
    publish_all: bool = False
    # Seconds (or a timedelta) after which the sandbox is removed, even when its owner
    # was killed: a host reaper process removes it then, and gc removes it once expired.
    max_lifetime: float | None = attrs.field(default=None, converter=_lifetime)

    def __attrs_post_init__(self) -> None:
        if (
            not isinstance(self.image, str)
            or not self.image
            or any(c.isspace() for c in self.image)
        ):
            raise _fail("image", f"expected an image name without spaces, got {self.image!r}")
        if looks_like_disk_image(self.image) and not is_disk_image(self.image):
            raise _fail(
                "image",
                f"a disk image ({', '.join(DISK_IMAGE_SUFFIXES)}) is named by its absolute "
                f"path, got {self.image!r}",
            )
        if not is_disk_image(self.image) and not is_builtin(self.image):
            try:
                parse_reference(self.image)
            except ValueError as exc:
                raise _fail("image", f"{self.image!r} is not an image reference: {exc}") from None
        for key in self.env:
            if not _ENV_KEY.fullmatch(key):
                raise _fail(f"env[{key!r}]", "not a valid environment variable name")
        for key in self.labels:
            if key.startswith(RESERVED_LABEL_PREFIX):
                raise _fail(f"labels[{key!r}]", f"the prefix {RESERVED_LABEL_PREFIX!r} is reserved")
        if self.workdir is not None:
            workdir = _guest_path("workdir", self.workdir)
            if any(_is_under(workdir, d) for d in _FORBIDDEN_GUEST_DIRS):
                raise _fail("workdir", f"cannot be under /proc or /sys: {workdir}")
        if self.user is not None and (
            not isinstance(self.user, str) or not USER_PATTERN.fullmatch(self.user)
        ):
            raise _fail("user", f"expected 'name', 'uid' or 'uid:gid', got {self.user!r}")
        if self.name is not None and (
            not isinstance(self.name, str) or not _NAME.fullmatch(self.name)
        ):
            raise _fail("name", "letters, digits and '-', at most 63, not starting with '-'")
        if self.hostname is not None and not is_hostname(self.hostname):
            raise _fail(
                "hostname",
                f"expected an RFC 1123 host name (dot-separated labels of letters, digits "
                f"and inner '-', 1-63 each, at most {_HOSTNAME_MAX} in all), "
                f"got {self.hostname!r}",
            )
        if self.backend is not None and not isinstance(self.backend, str):
            raise _fail("backend", f"expected a backend name, got {self.backend!r}")
        if not isinstance(self.keep, bool):
            raise _fail("keep", f"expected True or False, got {self.keep!r}")
        if not isinstance(self.publish_all, bool):
            raise _fail("publish_all", f"expected True or False, got {self.publish_all!r}")
        self._check_mounts()
        self._check_ports()

    def _check_mounts(self) -> None:
        targets: set[str] = set()
        for index, mount in enumerate(self.mounts):
            field = f"mounts[{index}]"
            if mount.target in targets:
                raise _fail(f"{field}.target", f"{mount.target} is mounted twice")
            targets.add(mount.target)
            if mount.volume or mount.tmpfs:
                continue
            reason = mount_refusal(self.profile, mount.source)
            if reason:
                raise _fail(f"{field}.source", reason)

    def _check_ports(self) -> None:
        if self.ports and self.network == "none":
            raise _fail(
                "ports", "publishing ports needs network 'isolated' or 'bridge', not 'none'"
            )
        seen_host: set[tuple[str, int, str]] = set()
        seen_guest: set[tuple[int, str]] = set()
        for index, port in enumerate(self.ports):
            guest_key = (port.guest_port, port.protocol)
            if guest_key in seen_guest:
                raise _fail(f"ports[{index}].guest_port", f"{port.guest_port} is published twice")
            seen_guest.add(guest_key)
            if port.host_port is None:
                continue
            host_key = (port.host_ip, port.host_port, port.protocol)
            if host_key in seen_host:
                raise _fail(f"ports[{index}].host_port", f"{port.host_port} is used twice")
            seen_host.add(host_key)

    def with_exposed(self, exposed: Sequence[tuple[int, str]]) -> SandboxSpec:
        """This spec with `exposed` (the image's (port, protocol) pairs) published on
        free loopback ports, where `ports` does not map them already (publish_all)."""
        mapped = {(p.guest_port, p.protocol) for p in self.ports}
        extra = [
            PortMapping(guest_port=port, protocol=protocol)
            for port, protocol in exposed
            if (port, protocol) not in mapped
        ]
        return attrs.evolve(self, ports=(*self.ports, *extra)) if extra else self

    @property
    def effective_network(self) -> NetworkMode:
        """The network asked for, else bridge when ports are published, else the profile's."""
        if self.network is not None:
            return self.network
        return NetworkMode.BRIDGE if self.ports else self.profile.network


def is_hostname(value: object) -> bool:
    """Whether `value` is an RFC 1123 host name."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= _HOSTNAME_MAX
        and all(_HOST_LABEL.fullmatch(label) for label in value.split("."))
    )


def source_changed(index: int, mount: Mount) -> InvalidSpec:
    return _fail(
        f"mounts[{index}].source",
        f"{mount.source} changed after the spec was built (replaced or redirected): "
        "build the spec again",
    )


def check_mount_sources(mounts: Sequence[Mount]) -> None:
    """Refuse a mount whose source path changed since the spec checked it: a component
    swapped for a symlink, or another file put in its place."""
    for index, mount in enumerate(mounts):
        try:
            same = os.path.realpath(mount.source) == mount.source and (
                _file_identity(mount.source) == mount.identity
            )
        except OSError:
            same = False
        if not same:
            raise source_changed(index, mount)


def mount_refusal(profile: Profile, source: str) -> str | None:
    """Why `profile` forbids sharing the host path `source`, or None when it allows it."""
    real = os.path.realpath(source)
    if real in profile.deny_mount_exact:
        return f"the profile {profile.name!r} forbids mounting {real}"
    for parent in profile.deny_mount_under:
        if _is_under(real, parent):
            return f"the profile {profile.name!r} forbids mounting {parent} or anything under it"
    if profile.deny_engine_sockets:
        for socket_path in ENGINE_SOCKETS:
            real_socket = os.path.realpath(socket_path)
            if _is_under(real_socket, real) or _is_under(socket_path, real):
                return (
                    f"the profile {profile.name!r} forbids exposing the engine socket {socket_path}"
                )
    return None


@attrs.frozen
class ExecResult:
    """The outcome of one command run in a sandbox."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    duration: float
    # The output held here is not all the command wrote (it passed max_output and was killed).
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (replacing what is not)."""
        return self.stdout.decode("utf-8", "replace")

    def check(self) -> ExecResult:
        """This result if the command succeeded; else CommandFailed with the output's tail."""
        if not self.ok:
            raise CommandFailed(self)
        return self
