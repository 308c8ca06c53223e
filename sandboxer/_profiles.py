"""Security profiles: data files in profiles/ loaded into a frozen `Profile`."""

from __future__ import annotations

import functools
import importlib.resources
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs

from ._errors import InvalidSpec
from ._seccomp import SeccompPolicy, Target, load_policy
from ._units import parse_size
from ._vocabulary import Control, NetworkMode, member

NETWORKS = tuple(NetworkMode)
# The OCI runtimes an app-container engine may run a sandbox under (`runtime=`): runc,
# crun, gVisor's runsc, Kata Containers.
RUNTIMES = ("runc", "crun", "runsc", "kata")
# Every control a profile can ask for, in the order reports show them.
CONTROLS = tuple(Control)


# Linux capability names (capabilities(7)), without the CAP_ prefix.
CAPABILITIES = frozenset(
    [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ]
)


def _capability_names(names: Any) -> tuple[str, ...]:
    """Upper case, without a CAP_ prefix; unknown names are checked in the profile."""
    return tuple(str(name).upper().removeprefix("CAP_") for name in names)


def _optional_capability_names(names: Any) -> tuple[str, ...] | None:
    return None if names is None else _capability_names(names)


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


def _extras(value: Mapping[str, Mapping[str, Any]] | None) -> Mapping[str, Mapping[str, str]]:
    """Values as the engines take them: text, with booleans spelt true/false."""
    return MappingProxyType(
        {
            engine: MappingProxyType({key: _extra_text(v) for key, v in keys.items()})
            for engine, keys in (value or {}).items()
        }
    )


def _extra_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _network(value: str) -> NetworkMode:
    return member(NetworkMode, "profile.network", value)


def _optional_size(value: int | str | None) -> int | None:
    return None if value is None else parse_size(value)


def check_runtime(field: str, value: object) -> str | None:
    """`value` if it is None or one of RUNTIMES; else InvalidSpec naming `field`."""
    if value is None or (isinstance(value, str) and value in RUNTIMES):
        return value
    raise InvalidSpec(field, f"expected one of {', '.join(RUNTIMES)} (or none), got {value!r}")


def _runtime(value: str | None) -> str | None:
    return check_runtime("profile.security.runtime", value)


def _seccomp_policy(value: SeccompPolicy | Path | str | None) -> SeccompPolicy | None:
    """Parsed and validated once, when the profile is made; a path names an OCI JSON file."""
    if value is None or isinstance(value, SeccompPolicy):
        return value
    return load_policy(Path(value), "profile.security.seccomp")


@attrs.frozen
class Profile:
    """A named set of security controls; each backend maps each control to its mechanism."""

    name: str
    description: str = ""
    cap_drop: tuple[str, ...] = attrs.field(default=(), converter=_capability_names)
    cap_add: tuple[str, ...] = attrs.field(default=(), converter=_capability_names)
    # The most a profile derived from this one may add back; None = no ceiling.
    cap_add_allowed: tuple[str, ...] | None = attrs.field(
        default=None, converter=_optional_capability_names
    )
    no_new_privileges: bool = False
    # From an OCI/Docker seccomp JSON (a path is loaded); None = the engine's default.
    seccomp: SeccompPolicy | None = attrs.field(default=None, converter=_seccomp_policy)
    read_only_root: bool = False
    tmpfs: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen_mapping)
    user: str | None = None
    pids: int | None = None
    memory: int | None = attrs.field(default=None, converter=_optional_size)
    cpus: float | None = None
    network: NetworkMode = attrs.field(default=NetworkMode.BRIDGE, converter=_network)
    deny_mount_exact: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    deny_mount_under: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    deny_engine_sockets: bool = False
    # Each sandbox its own host id range, where the engine maps ids per sandbox (Incus).
    isolated_ids: bool = False
    # The OCI runtime an app container runs under (RUNTIMES); None: the engine's default.
    runtime: str | None = attrs.field(default=None, converter=_runtime)
    # Named per-engine extras, e.g. {"incus": {"boot.autostart": "false"}}: engine keys no
    # control sets. The engine refuses one that would override a key of its own.
    extras: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict, converter=_extras)

    def __attrs_post_init__(self) -> None:
        self._check_capabilities()
        if self.pids is not None and self.pids < 1:
            raise InvalidSpec("profile.limits.pids", f"must be at least 1, got {self.pids}")
        if self.cpus is not None and self.cpus <= 0:
            raise InvalidSpec("profile.limits.cpus", f"must be positive, got {self.cpus}")

    def _check_capabilities(self) -> None:
        for field in ("cap_drop", "cap_add", "cap_add_allowed"):
            unknown = [c for c in getattr(self, field) or () if c not in CAPABILITIES | {"ALL"}]
            if unknown:
                raise InvalidSpec(f"profile.{field}", f"unknown capabilities {unknown}")
        if self.cap_add_allowed is None:
            return
        if "ALL" not in self.cap_drop:
            raise InvalidSpec(
                "profile.cap_drop",
                f"profile {self.name!r} limits cap_add, so it must drop ALL capabilities",
            )
        beyond = [c for c in self.cap_add if c not in self.cap_add_allowed]
        if beyond:
            raise InvalidSpec(
                "profile.cap_add",
                f"{', '.join(beyond)} may not be added under profile {self.name!r} "
                f"(allowed: {', '.join(self.cap_add_allowed) or 'none'})",
            )

    def controls(self) -> tuple[Control, ...]:
        """The controls this profile asks a backend to enforce."""
        wanted = {
            "capabilities": bool(self.cap_drop),
            "no_new_privileges": self.no_new_privileges,
            "seccomp": self.seccomp is not None,
            "read_only_root": self.read_only_root,
            "non_root_user": self.user is not None,
            "pids_limit": self.pids is not None,
            "memory_limit": self.memory is not None,
            "cpu_limit": self.cpus is not None,
            "network": self.network == "none",
        }
        return tuple(control for control in CONTROLS if wanted[control])

    def seccomp_target(self) -> Target:
        """What the policy's includes/excludes see: the capabilities this profile grants."""
        held = set(CAPABILITIES) if "ALL" not in self.cap_drop else set()
        return Target(caps=frozenset((held - set(self.cap_drop)) | set(self.cap_add)))

    def derive(self, name: str, **changes: Any) -> Profile:
        """A new profile based on this one.

        `load_profile("hardened").derive("web", cap_add=["NET_BIND_SERVICE"])`
        """
        return attrs.evolve(self, name=name, **changes)


# Where each TOML key lands on `Profile`; sections keep the files readable.
_LAYOUT: dict[str, dict[str, str]] = {
    "security": {
        "cap_drop": "cap_drop",
        "cap_add": "cap_add",
        "cap_add_allowed": "cap_add_allowed",
        "no_new_privileges": "no_new_privileges",
        "seccomp": "seccomp",
        "read_only_root": "read_only_root",
        "user": "user",
        "isolated_ids": "isolated_ids",
        "runtime": "runtime",
    },
    "filesystem": {
        "tmpfs": "tmpfs",
        "deny_mount_exact": "deny_mount_exact",
        "deny_mount_under": "deny_mount_under",
        "deny_engine_sockets": "deny_engine_sockets",
    },
    "limits": {"pids": "pids", "memory": "memory", "cpus": "cpus"},
    "network": {"mode": "network"},
}


def _builtin_dir() -> Path:
    return Path(str(importlib.resources.files("sandboxer.profiles")))


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped with sandboxer."""
    return sorted(path.stem for path in _builtin_dir().glob("*.toml"))


def _profile_fields(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    fields: dict[str, Any] = {"description": data.pop("description", "")}
    fields["name"] = data.pop("name")
    fields["extras"] = data.pop("extras", {})
    for section, keys in _LAYOUT.items():
        values = data.pop(section, {})
        for key, value in values.items():
            if key not in keys:
                raise InvalidSpec(f"profile.{section}.{key}", "unknown key")
            fields[keys[key]] = value
    if data:
        raise InvalidSpec(f"profile.{next(iter(data))}", "unknown key or section")
    if fields.get("seccomp") is not None:
        path = (base_dir / fields["seccomp"]).resolve()
        if not path.is_file():
            raise InvalidSpec("profile.security.seccomp", f"no such file: {path}")
        fields["seccomp"] = path
    if "tmpfs" in fields:
        fields["tmpfs"] = {path: parse_size(size) for path, size in fields["tmpfs"].items()}
    return fields


def load_profile(name_or_path: str | Path | Profile) -> Profile:
    """A built-in profile by name ("hardened", "default", "strict"), or a TOML file by path."""
    if isinstance(name_or_path, Profile):
        return name_or_path
    if not isinstance(name_or_path, str | Path):
        raise InvalidSpec("profile", f"expected a name, a path or a Profile, got {name_or_path!r}")
    text = str(name_or_path)
    if "/" in text or text.endswith(".toml"):
        return _load_file(Path(text), text)
    return _load_builtin(text)


@functools.cache
def _load_builtin(name: str) -> Profile:
    # Profiles are frozen, so every spec may share one parsed copy.
    return _load_file(_builtin_dir() / f"{name}.toml", name)


def _load_file(path: Path, asked: str) -> Profile:
    if not path.is_file():
        known = ", ".join(builtin_profiles())
        raise InvalidSpec(
            "profile", f"unknown profile {asked!r} (built-in: {known}; or a .toml path)"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidSpec("profile", f"{path} is not valid TOML: {exc}") from exc
    data.setdefault("name", path.stem)
    try:
        return Profile(**_profile_fields(data, path.parent))
    except InvalidSpec:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidSpec("profile", f"{path}: {exc}") from exc
