"""The closed vocabularies of specs, profiles and capabilities, as string enums.

Members are their own strings (`NetworkMode.NONE == "none"`), so callers keep passing plain
strings; fields convert them on the way in and refuse anything outside the set.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from ._errors import InvalidSpec


class _Vocabulary(enum.StrEnum):
    def __repr__(self) -> str:
        return repr(self.value)  # messages show 'none', as the caller wrote it


class Kind(_Vocabulary):
    """What sort of sandbox an engine runs, in order of weight."""

    APP = "app"
    SYSTEM = "system"
    VM = "vm"


class Isolation(_Vocabulary):
    """How strongly a sandbox is walled off, weakest first."""

    PROCESS = "process"
    USER = "user"
    KERNEL = "kernel"


class NetworkMode(_Vocabulary):
    """How a sandbox reaches the network (not an engine network object)."""

    NONE = "none"
    ISOLATED = "isolated"
    BRIDGE = "bridge"


class PullPolicy(_Vocabulary):
    """When a launch fetches its image from the registry."""

    ALWAYS = "always"  # every launch asks the registry (a moved tag is followed)
    MISSING = "missing"  # only when no local copy exists
    NEVER = "never"  # a missing image is ImageNotFound


class Protocol(_Vocabulary):
    TCP = "tcp"
    UDP = "udp"


class Control(_Vocabulary):
    """Every control a profile can ask for, in the order reports show them."""

    CAPABILITIES = "capabilities"
    NO_NEW_PRIVILEGES = "no_new_privileges"
    SECCOMP = "seccomp"
    READ_ONLY_ROOT = "read_only_root"
    NON_ROOT_USER = "non_root_user"
    PIDS_LIMIT = "pids_limit"
    MEMORY_LIMIT = "memory_limit"
    CPU_LIMIT = "cpu_limit"
    NETWORK = "network"


V = TypeVar("V", bound=_Vocabulary)


def member(vocabulary: type[V], field: str, value: str) -> V:
    """`value` as a member of `vocabulary`, else InvalidSpec naming `field`."""
    try:
        return vocabulary(value)
    except ValueError:
        known = tuple(m.value for m in vocabulary)
        raise InvalidSpec(field, f"must be one of {known}, got {value!r}") from None


def optional_member(vocabulary: type[V], field: str, value: str | None) -> V | None:
    return None if value is None else member(vocabulary, field, value)
