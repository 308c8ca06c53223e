"""Who PID 1 of a sandbox is, what it runs, and the defaults every exec inherits.

Three kinds of init, by image:
- BUILTIN: the busybox images' /sbin/init; it needs no root, so it runs as the plan's
  user, and runs spec.command as a service (`_prepare`).
- HELPER: images of the store (OCI) may hold no init or shell at all: sandboxer's static
  helper is mounted read-only at /.sandboxer and its init is PID 1 (`lxc.init.cmd`), as
  the image's effective user, in its working directory, with its environment. It runs
  the image config's main process (Docker's rules, `ImageConfig`).
- OWN: the image's own init (an image Incus already held, or `sandboxer/systemd` when an
  init was asked for), which stays the container's root.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from sandboxer.backend import LaunchPlan, UnsupportedFeature
from sandboxer.images import GROUP, PASSWD, ImageConfig
from sandboxer.images.accounts import check_not_root, user_to_check
from sandboxer.images.helper import MOUNT_POINT, helper_dir, init_command_line
from sandboxer.images.store import LocalImage
from sandboxer.images.tree import identity_in_tree

from ._users import Identity, resolve

# An image's /etc/passwd and /etc/group are read on the host, bounded: real ones are KiB.
HELPER_DEVICE = "sandboxer-helper"
# What systemd as PID 1 needs that a profile's controls take away: measured, it dies at
# boot with either in place (no-new-privileges, a read-only root, limits and a non-root
# exec user it survives). Reported unenforced, so refused unless the caller consents.
SYSTEMD_LIFTS = {
    "capabilities": "not applied: systemd as PID 1 needs capabilities to boot (CAP_SYS_ADMIN "
    "to mount /run, /dev/shm and its cgroups, CAP_SETUID/CAP_SETGID and more to start "
    "services as their users): the container keeps Incus' default set, inside its user "
    "namespace",
    "seccomp": "not applied: systemd as PID 1 mounts file systems and sets up namespaces and "
    "keyrings for its services, which the profile's allowlist denies; Incus' default "
    "denylist applies instead (kexec, kernel modules, open_by_handle_at, ...)",
}


class Init(enum.Enum):
    BUILTIN = "the built-in images' init"
    HELPER = "sandboxer's helper init"
    OWN = "the image's own init"


@attrs.frozen
class Boot:
    init: Init
    identity: Identity | None = None  # who PID 1 runs as; None: the container's root
    main: tuple[str, ...] | None = None  # the helper init's main process
    environment: Mapping[str, str] = attrs.field(factory=dict)
    workdir: str = "/"  # PID 1's and every exec's default
    user: str | None = None  # every exec's default
    helper: str | None = None  # the helper directory on the host

    def lines(self) -> list[str]:
        """raw.lxc lines: LXC switches to these ids and directory right before it execs
        the init, so everything the init starts inherits them."""
        lines = []
        if self.init is Init.HELPER:
            lines += [
                f"lxc.init.cmd = {init_command_line(self.main)}",
                f"lxc.init.cwd = {self.workdir}",
            ]
        if self.identity is not None:
            lines += [f"lxc.init.uid = {self.identity.uid}", f"lxc.init.gid = {self.identity.gid}"]
        # Incus drops an `environment.KEY` of "" (unset, to it): LXC's own line keeps it.
        lines += [f"lxc.environment = {key}=" for key in self.empty_environment]
        return lines

    @property
    def empty_environment(self) -> tuple[str, ...]:
        """The variables set to "", which Incus' config cannot hold."""
        return tuple(sorted(key for key, value in self.environment.items() if not value))

    @property
    def busybox(self) -> str | None:
        """The busybox the file calls run: the helper's, the built-in images' own; None:
        the image's own tools (its own init, which may be systemd's Debian)."""
        if self.init is Init.HELPER:
            return f"{MOUNT_POINT}/busybox"
        return "/bin/busybox" if self.init is Init.BUILTIN else None

    def devices(self) -> dict[str, dict[str, str]]:
        if self.helper is None:
            return {}
        return {
            HELPER_DEVICE: {
                "type": "disk", "source": self.helper, "path": MOUNT_POINT, "readonly": "true"
            }
        }  # fmt: skip


def builtin(plan: LaunchPlan) -> Boot:
    """The busybox images: PID 1 runs as the plan's user, resolved against their accounts."""
    identity = None if plan.user is None else resolve(plan.user, PASSWD, GROUP)
    return Boot(Init.BUILTIN, identity, None, dict(plan.env), plan.workdir or "/", plan.user)


def own(plan: LaunchPlan, image: LocalImage | None) -> Boot:
    """The image's own init; a store image's config still gives every exec its defaults."""
    config = image.config if image is not None else ImageConfig()
    return Boot(
        Init.OWN,
        environment=_checked(config.environment(plan.env)),
        workdir=_checked_path(config.working_directory(plan.workdir)),
        user=config.effective_user(plan.user),
    )


def helper(plan: LaunchPlan, image: LocalImage) -> Boot:
    config = image.config
    user = config.effective_user(plan.user)
    identity = None if user is None else identity_in_tree(user, image.rootfs)
    checked = user_to_check(plan)
    if checked is not None and identity is not None:
        check_not_root(checked, identity)
    return Boot(
        Init.HELPER,
        identity=identity,
        main=config.main_process(plan.command, plan.entrypoint),
        environment=_checked(config.environment(plan.env)),
        workdir=_checked_path(config.working_directory(plan.workdir)),
        user=user,
        helper=str(helper_dir()),
    )


def _checked(environment: dict[str, str]) -> dict[str, str]:
    """Incus keeps the environment in its config, one line per variable in LXC's."""
    for key, value in environment.items():
        if any(c in key + value for c in "\n\r\0") or not key:
            raise UnsupportedFeature(
                f"incus cannot pass the image's environment variable {key!r}: its name or "
                "value holds a line break"
            )
    return environment


def _checked_path(path: str) -> str:
    if not path.startswith("/") or any(c in path for c in "\n\r\0"):
        raise UnsupportedFeature(f"incus cannot use working directory {path!r} of the image")
    return path
