"""An OCI/Docker seccomp deny list turned into LXC rules for `security.syscalls.deny`.

Incus appends those lines to its own allow-by-default policy (which already refuses
kexec_load, open_by_handle_at and module loading), so a deny list with errno, kill or
trap actions and argument conditions translates exactly. Anything else is reported,
never dropped in silence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs

_ACTIONS = {
    "SCMP_ACT_KILL": "kill",
    "SCMP_ACT_KILL_THREAD": "kill",
    "SCMP_ACT_KILL_PROCESS": "kill",
    "SCMP_ACT_TRAP": "trap",
}
_OPS = (
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
)
_SYSCALL = re.compile(r"^[a-z0-9_]+$")
_EPERM = 1


@attrs.frozen
class Translation:
    rules: tuple[str, ...]
    problems: tuple[str, ...]  # what Incus cannot express; empty means exact


def _condition(arg: dict[str, Any]) -> str:
    op = arg.get("op")
    if op not in _OPS:
        raise ValueError(f"argument operator {op!r}")
    index, value = int(arg["index"]), int(arg.get("value", 0))
    if op == "SCMP_CMP_MASKED_EQ":
        # OCI: value is the mask, valueTwo the datum; LXC: [index, datum, op, mask].
        return f"[{index},{int(arg.get('valueTwo', 0))},{op},{value}]"
    return f"[{index},{value},{op},0]"


def _action(rule: dict[str, Any]) -> str:
    action = rule.get("action")
    if action == "SCMP_ACT_ERRNO":
        return f"errno {int(rule.get('errnoRet', _EPERM))}"
    if action in _ACTIONS:
        return _ACTIONS[action]
    raise ValueError(f"action {action!r}")


def translate(policy: dict[str, Any]) -> Translation:
    rules: list[str] = []
    problems: list[str] = []
    default = policy.get("defaultAction")
    if default != "SCMP_ACT_ALLOW":
        problems.append(
            f"defaultAction {default!r}: Incus can only add denials to its allow-by-default policy"
        )
    for entry in policy.get("syscalls", []):
        names = list(entry.get("names", [])) + ([entry["name"]] if "name" in entry else [])
        if entry.get("action") == "SCMP_ACT_ALLOW":
            continue  # allowing is what the policy does by default
        if entry.get("includes") or entry.get("excludes"):
            problems.append(f"{names}: includes/excludes conditions")
            continue
        try:
            action = _action(entry)
            conditions = "".join(_condition(arg) for arg in entry.get("args") or [])
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{names}: unsupported {exc}")
            continue
        for name in names:
            if not _SYSCALL.match(name):
                problems.append(f"{name!r}: not a syscall name")
                continue
            rules.append(f"{name} {action} {conditions}".rstrip())
    return Translation(tuple(rules), tuple(problems))


def translate_file(path: Path) -> Translation:
    try:
        policy = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return Translation((), (f"cannot read {path}: {exc}",))
    return translate(policy)
