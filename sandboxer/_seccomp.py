"""A seccomp policy in the OCI/Docker JSON format, parsed and validated once.

Profiles carry a `SeccompPolicy`; each backend translates it to its own mechanism
(Docker takes the JSON back, Incus an LXC policy, libvirt a BPF program built with
libseccomp). Backends that filter by themselves first `resolve` the policy for the
sandbox: the rules whose `includes`/`excludes` match its architecture, capabilities and
kernel, as Docker does for its own.
"""

from __future__ import annotations

import functools
import json
import platform
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ._errors import InvalidSpec

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
ACTIONS = frozenset(
    {
        ALLOW,
        ERRNO,
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_LOG",
    }
)
OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)
EPERM = 1
# The architecture names `includes`/`excludes` use (Go's GOARCH spelling, as Docker's).
NATIVE_ARCH = "amd64"
# Validated with fullmatch: `$` would also match before a trailing newline.
SYSCALL_NAME = re.compile(r"[a-z0-9_]+")
_ARCH = re.compile(r"SCMP_ARCH_[A-Z0-9_]+")
_U64 = 2**64
_KERNEL = re.compile(r"(\d+)\.(\d+)")


def host_kernel() -> tuple[int, int] | None:
    """This host's kernel as (major, minor): what a container's minKernel rules see."""
    found = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(found[1]), int(found[2])) if found else None


@attrs.frozen
class ArgFilter:
    """One comparison on a syscall argument; for MASKED_EQ, `value` is the mask."""

    index: int
    op: str
    value: int
    value_two: int = 0


@attrs.frozen
class Condition:
    """An `includes` or `excludes` filter; empty fields match everything (or nothing)."""

    arches: frozenset[str] = frozenset()
    caps: frozenset[str] = frozenset()  # without the CAP_ prefix
    min_kernel: tuple[int, int] | None = None

    def empty(self) -> bool:
        return not self.arches and not self.caps and self.min_kernel is None


@attrs.frozen
class Target:
    """What includes/excludes are matched against: one sandbox's arch, caps and kernel."""

    arch: str = NATIVE_ARCH
    caps: frozenset[str] = frozenset()
    kernel: tuple[int, int] | None = None  # None = unknown: minKernel rules are left out


@attrs.frozen
class SeccompRule:
    names: tuple[str, ...]
    action: str
    errno: int | None = None  # for SCMP_ACT_ERRNO; EPERM when the JSON gives none
    args: tuple[ArgFilter, ...] = ()
    includes: Condition = Condition()
    excludes: Condition = Condition()
    comment: str = ""

    def applies_to(self, target: Target) -> bool:
        """Docker's reading: includes needs every cap it names, excludes any one of them;
        a rule gated on the kernel is left out when the kernel is unknown."""
        inc, exc, kernel = self.includes, self.excludes, target.kernel
        if inc.min_kernel is not None and (kernel is None or kernel < inc.min_kernel):
            return False
        if exc.min_kernel is not None and (kernel is None or kernel >= exc.min_kernel):
            return False
        if inc.arches and target.arch not in inc.arches:
            return False
        if not inc.caps <= target.caps or exc.caps & target.caps:
            return False
        return target.arch not in exc.arches


@attrs.frozen
class SeccompPolicy:
    default_action: str
    default_errno: int | None = None  # for an SCMP_ACT_ERRNO default; EPERM when None
    architectures: tuple[str, ...] = ()
    rules: tuple[SeccompRule, ...] = ()

    def resolve(self, target: Target) -> SeccompPolicy:
        """The rules that apply to `target`, without conditions left to evaluate."""
        return attrs.evolve(
            self,
            rules=tuple(
                attrs.evolve(rule, includes=Condition(), excludes=Condition())
                for rule in self.rules
                if rule.applies_to(target)
            ),
        )

    def allowed(self, target: Target) -> frozenset[str]:
        """Names allowed for `target` by some rule (perhaps only for some arguments)."""
        return frozenset(
            name
            for rule in self.resolve(target).rules
            if rule.action == ALLOW
            for name in rule.names
        )

    def summary(self) -> str:
        """One line for people: which style of list, how long, what the rest gets."""
        style = "denylist" if self.default_action == ALLOW else "allowlist"
        listed = {name for rule in self.rules if rule.action != ALLOW for name in rule.names}
        if style == "allowlist":
            listed = {name for rule in self.rules if rule.action == ALLOW for name in rule.names}
        errno = f" {self.default_errno}" if self.default_errno is not None else ""
        return f"{style} of {len(listed)} calls, the rest {self.default_action}{errno}"

    def oci_json(self) -> str:
        """The policy in the OCI/Docker JSON format (computed once per policy)."""
        return _oci_json(self)


@functools.cache
def _oci_json(policy: SeccompPolicy) -> str:
    return json.dumps(_oci(policy), separators=(",", ":"))


def _oci(policy: SeccompPolicy) -> dict[str, Any]:
    data: dict[str, Any] = {"defaultAction": policy.default_action}
    if policy.default_errno is not None:
        data["defaultErrnoRet"] = policy.default_errno
    if policy.architectures:
        data["architectures"] = list(policy.architectures)
    data["syscalls"] = [_oci_rule(rule) for rule in policy.rules]
    return data


def _oci_condition(condition: Condition) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if condition.arches:
        data["arches"] = sorted(condition.arches)
    if condition.caps:
        data["caps"] = sorted("CAP_" + cap for cap in condition.caps)
    if condition.min_kernel is not None:
        data["minKernel"] = "{}.{}".format(*condition.min_kernel)
    return data


def _oci_rule(rule: SeccompRule) -> dict[str, Any]:
    data: dict[str, Any] = {"names": list(rule.names), "action": rule.action}
    if rule.errno is not None:
        data["errnoRet"] = rule.errno
    if rule.args:
        data["args"] = [
            {"index": a.index, "value": a.value, "valueTwo": a.value_two, "op": a.op}
            for a in rule.args
        ]
    for key, condition in (("includes", rule.includes), ("excludes", rule.excludes)):
        if not condition.empty():
            data[key] = _oci_condition(condition)
    if rule.comment:
        data["comment"] = rule.comment
    return data


# parsing -----------------------------------------------------------------------------
def _check_keys(data: Any, field: str, known: Iterable[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidSpec(field, f"expected an object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidSpec(f"{field}.{unknown[0]}", "unknown key")
    return data


def _int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise InvalidSpec(field, f"expected an integer in [{low}, {high}), got {value!r}")
    return value


def _strings(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidSpec(field, f"expected a list of strings, got {value!r}")
    return tuple(value)


def _action(value: Any, field: str) -> str:
    if value not in ACTIONS:
        raise InvalidSpec(field, f"unknown action {value!r} (known: {', '.join(sorted(ACTIONS))})")
    return str(value)


def _errno(data: Mapping[str, Any], key: str, action: str, field: str) -> int | None:
    if key not in data:
        return EPERM if action == ERRNO else None
    if action != ERRNO:
        raise InvalidSpec(f"{field}.{key}", f"only meaningful with {ERRNO}, not {action}")
    return _int(data[key], f"{field}.{key}", 0, 4096)


def _arg(data: Any, field: str) -> ArgFilter:
    data = _check_keys(data, field, ("index", "value", "valueTwo", "op"))
    if data.get("op") not in OPERATORS:
        raise InvalidSpec(f"{field}.op", f"unknown operator {data.get('op')!r}")
    return ArgFilter(
        index=_int(data.get("index"), f"{field}.index", 0, 6),
        op=data["op"],
        value=_int(data.get("value", 0), f"{field}.value", 0, _U64),
        value_two=_int(data.get("valueTwo", 0), f"{field}.valueTwo", 0, _U64),
    )


def _condition(data: Any, field: str) -> Condition:
    data = _check_keys(data if data is not None else {}, field, ("arches", "caps", "minKernel"))
    kernel = data.get("minKernel")
    parsed = _KERNEL.fullmatch(kernel) if isinstance(kernel, str) else None
    if kernel is not None and parsed is None:
        raise InvalidSpec(f"{field}.minKernel", f"expected 'MAJOR.MINOR', got {kernel!r}")
    caps = _strings(data.get("caps", []), f"{field}.caps")
    return Condition(
        arches=frozenset(_strings(data.get("arches", []), f"{field}.arches")),
        caps=frozenset(cap.upper().removeprefix("CAP_") for cap in caps),
        min_kernel=(int(parsed[1]), int(parsed[2])) if parsed else None,
    )


_RULE_KEYS = ("name", "names", "action", "errnoRet", "args", "includes", "excludes", "comment")


def _rule(data: Any, field: str) -> SeccompRule:
    data = _check_keys(data, field, _RULE_KEYS)
    names = _strings(data.get("names", []), f"{field}.names")
    if "name" in data:
        if names:
            raise InvalidSpec(f"{field}.name", "give name or names, not both")
        names = _strings([data["name"]], f"{field}.name")
    if not names:
        raise InvalidSpec(f"{field}.names", "names no syscall")
    bad = [name for name in names if not SYSCALL_NAME.fullmatch(name)]
    if bad:
        raise InvalidSpec(f"{field}.names", f"not syscall names: {bad}")
    action = _action(data.get("action"), f"{field}.action")
    args = data.get("args") or []
    if not isinstance(args, list):
        raise InvalidSpec(f"{field}.args", f"expected a list, got {args!r}")
    comment = data.get("comment", "")
    if not isinstance(comment, str):
        raise InvalidSpec(f"{field}.comment", "expected a string")
    return SeccompRule(
        names=names,
        action=action,
        errno=_errno(data, "errnoRet", action, field),
        args=tuple(_arg(arg, f"{field}.args[{i}]") for i, arg in enumerate(args)),
        includes=_condition(data.get("includes"), f"{field}.includes"),
        excludes=_condition(data.get("excludes"), f"{field}.excludes"),
        comment=comment,
    )


def _architectures(data: Mapping[str, Any], field: str) -> tuple[str, ...]:
    if "archMap" in data:
        if "architectures" in data:
            raise InvalidSpec(f"{field}.archMap", "give architectures or archMap, not both")
        entries = data["archMap"]
        if not isinstance(entries, list):
            raise InvalidSpec(f"{field}.archMap", "expected a list")
        found: tuple[str, ...] = ()
        for i, entry in enumerate(entries):
            keys = ("architecture", "subArchitectures")
            entry = _check_keys(entry, f"{field}.archMap[{i}]", keys)
            # Only this host's entry matters, as in Docker: x86-64 and its sub-architectures.
            if entry.get("architecture") == "SCMP_ARCH_X86_64":
                subs = entry.get("subArchitectures") or []
                found = (
                    "SCMP_ARCH_X86_64",
                    *_strings(subs, f"{field}.archMap[{i}].subArchitectures"),
                )
        arches = found
    else:
        arches = _strings(data.get("architectures", []), f"{field}.architectures")
    bad = [arch for arch in arches if not _ARCH.fullmatch(arch)]
    if bad:
        raise InvalidSpec(f"{field}.architectures", f"not SCMP_ARCH_ names: {bad}")
    return arches


_POLICY_KEYS = ("defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls")


def parse_policy(data: Any, field: str = "seccomp") -> SeccompPolicy:
    """A policy from decoded OCI JSON; InvalidSpec names the offending field."""
    data = _check_keys(data, field, _POLICY_KEYS)
    action = _action(data.get("defaultAction"), f"{field}.defaultAction")
    rules = data.get("syscalls")
    rules = [] if rules is None else rules
    if not isinstance(rules, list):
        raise InvalidSpec(f"{field}.syscalls", "expected a list")
    return SeccompPolicy(
        default_action=action,
        default_errno=_errno(data, "defaultErrnoRet", action, field),
        architectures=_architectures(data, field),
        rules=tuple(_rule(rule, f"{field}.syscalls[{i}]") for i, rule in enumerate(rules)),
    )


def load_policy(path: Path, field: str = "seccomp") -> SeccompPolicy:
    """A policy from an OCI JSON file."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidSpec(field, f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise InvalidSpec(field, f"{path} is not valid JSON: {exc}") from exc
    return parse_policy(data, field)
