"""`sandboxer/systemd` with its own systemd as PID 1: when an engine boots it that way.

Engines that can (Incus, libvirt) decide it alike: only where the caller asked for an
init or a system sandbox; otherwise the image runs under sandboxer's own init like any
other image of the store.
"""

from __future__ import annotations

from .._plan import LaunchPlan

SYSTEMD_IMAGE = "sandboxer/systemd"


def boots_systemd(plan: LaunchPlan) -> bool:
    """`sandboxer/systemd` boots systemd where an init or a system sandbox was asked for."""
    requirements = plan.requirements
    return plan.image == SYSTEMD_IMAGE and (requirements.init or requirements.kind == "system")


def command_refusal(plan: LaunchPlan) -> list[str]:
    """systemd runs units, not a spec's command: a reason to refuse one, if given."""
    if boots_systemd(plan) and (plan.command or plan.entrypoint):
        return [
            f"{SYSTEMD_IMAGE} with an init boots systemd as PID 1, which runs no "
            "spec.command or spec.entrypoint: start it as a unit, or exec it"
        ]
    return []
