"""A profile's seccomp policy as an LXC seccomp policy, for Incus' `raw.seccomp`.

`raw.seccomp` replaces Incus' generated policy as a whole, which is what an allow list
needs: `security.syscalls.allow`/`deny` keep Incus' own default action. The text is
LXC's policy format version 2: the line `2`, then `allowlist` or `denylist` with the
default action, then `[all]` and one line per syscall: `name action [index,value,op,mask]...`.
LXC applies `[all]` rules to the 32-bit compat ABIs of an x86-64 host too.
"""

from __future__ import annotations

import attrs

from sandboxer.backend import (
    ALLOW,
    EPERM,
    ERRNO,
    SYSCALL_NAME,
    ArgFilter,
    InvalidSpec,
    SeccompPolicy,
    SeccompRule,
)

_ACTIONS = {
    ALLOW: "allow",
    "SCMP_ACT_KILL": "kill",
    "SCMP_ACT_KILL_THREAD": "kill",
    "SCMP_ACT_TRAP": "trap",
}


@attrs.frozen
class Translation:
    policy: str  # the raw.seccomp text
    problems: tuple[str, ...]  # what LXC cannot express; empty means exact


def _action(action: str, errno: int | None) -> str | None:
    if action == ERRNO:
        return f"errno {EPERM if errno is None else errno}"
    return _ACTIONS.get(action)


def _condition(arg: ArgFilter) -> str:
    if arg.op == "SCMP_CMP_MASKED_EQ":
        # OCI: value is the mask, valueTwo the datum; LXC: [index, datum, op, mask].
        return f"[{arg.index},{arg.value_two},{arg.op},{arg.value}]"
    return f"[{arg.index},{arg.value},{arg.op}]"


def _lines(rule: SeccompRule) -> list[str]:
    action = _action(rule.action, rule.errno)
    if action is None:
        raise ValueError(f"{list(rule.names)}: action {rule.action} has no LXC equivalent")
    # The action is always written: LXC reads a bare `[` after the name as a bad action.
    conditions = "".join(_condition(arg) for arg in rule.args)
    return [f"{name} {action} {conditions}".rstrip() for name in rule.names]


def translate(policy: SeccompPolicy) -> Translation:
    """`policy` must be resolved (no includes/excludes left): see SeccompPolicy.resolve."""
    problems: list[str] = []
    default = _action(policy.default_action, policy.default_errno)
    if default is None:
        problems.append(f"defaultAction {policy.default_action} has no LXC equivalent")
        default = "kill"
    style = "denylist" if policy.default_action == ALLOW else "allowlist"
    lines = ["2", f"{style} {default}", "[all]"]
    for rule in policy.rules:
        bad = [name for name in rule.names if not SYSCALL_NAME.fullmatch(name)]
        if bad:
            # The last guard: a newline or space in a name would write a rule line of its own.
            raise InvalidSpec("seccomp", f"not syscall names: {bad}")
        try:
            lines += _lines(rule)
        except ValueError as exc:
            problems.append(str(exc))
    return Translation("\n".join(lines) + "\n", tuple(problems))
