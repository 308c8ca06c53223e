"""What in a plan the Incus translation cannot honour: refused by `check`, before any
engine object is made, never from inside `create`."""

from __future__ import annotations

from sandboxer.backend import LaunchPlan
from sandboxer.images.systemd import command_refusal

from ._boot import Boot, Init
from ._config import APPENDED, SAFE_TARGET, own_config

# Keys Incus ignores once raw.seccomp is set.
_VOIDED = (
    "security.syscalls.allow",
    "security.syscalls.deny",
    "security.syscalls.deny_default",
    "security.syscalls.deny_compat",
)


def refusals(plan: LaunchPlan) -> list[str]:
    found = command_refusal(plan)
    found += [
        f"incus keeps the sandbox's environment in its config, which cannot hold a line "
        f"break (env[{key!r}]): pass such a value to exec instead"
        for key, value in plan.env.items()
        if "\n" in value or "\r" in value
    ]
    for tmpfs in plan.tmpfs:
        target = tmpfs.path.strip("/")
        if not target or any(c.isspace() for c in target):
            found.append(f"incus cannot mount a tmpfs at {tmpfs.path!r}")
    found += [
        f"incus cannot mark the mount at {mount.target!r} nosuid,nodev: its path holds "
        "characters other than letters, digits and ._/@%+=:,-"
        for mount in plan.mounts
        if not SAFE_TARGET.fullmatch(mount.target)
    ]
    return found + _extra_refusals(plan)


def _extra_refusals(plan: LaunchPlan) -> list[str]:
    """Extras may add keys, never override one a control or the spec sets."""
    extras = plan.extras.get("incus", {})
    if not extras:
        return []
    every = Boot(Init.OWN, environment=dict(plan.env), user=plan.user or "")
    owned = set(own_config(plan, None, every)) - set(APPENDED)
    found = [
        f"profile extra incus {key!r} would override what the profile's controls or the "
        "spec set: use the named control instead"
        for key in extras
        if key in owned
    ]
    if plan.controls:
        # raw.lxc can add hooks that run as root on the host, raw.seccomp can allow any
        # call: either voids every claim sb.enforcement would make.
        found += [
            f"profile extra incus {key!r} can undo any control of profile "
            f"{plan.profile_name!r} (hooks run as root on the host): use a profile without "
            "controls (such as 'default') for raw LXC configuration"
            for key in extras
            if key.startswith("raw.")
        ]
    if plan.seccomp is not None and not plan.requirements.nested:
        found += [
            f"profile extra incus {key!r} has no effect beside the profile's seccomp policy "
            "(Incus then uses raw.seccomp alone): add LXC lines to raw.seccomp instead"
            for key in extras
            if key in _VOIDED
        ]
    return found
