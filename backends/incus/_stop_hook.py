"""A container stops in about 0.1 s instead of 0.6 s: without lxcfs's reboot hook.

Incus includes LXC's common.conf.d, where Debian's lxcfs package adds a post-stop hook,
/usr/share/lxcfs/lxc.reboot.hook, that only sleeps 0.5 s (for reboots, which sandboxes
never do). It dominated every stop and so every destroy. raw.lxc comes after the
includes, so it can empty the post-stop hooks and put back the one Incus itself sets,
through which the daemon learns that the container stopped (and releases its devices).
That line is the daemon's own command, known only for a local daemon: the executable
behind its server_pid and its directory beside the unix socket.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from sandboxer.backend import EngineError, logger

from ._client import Incus
from ._errors import incus_errors

# Where LXC's included configuration lives, and the hook line lxcfs puts there.
COMMON_CONF_D = Path("/usr/share/lxc/config/common.conf.d")
_POST_STOP = "lxc.hook.post-stop"


@attrs.frozen
class LocalDaemon:
    """What Incus's own post-stop hook line is made of."""

    executable: str  # /usr/libexec/incus/incusd
    var_dir: str  # /var/lib/incus
    project: str  # default

    def post_stop_lines(self, instance: str) -> list[str]:
        """raw.lxc lines leaving only Incus's post-stop hook (as Incus writes it)."""
        hook = f'{self.executable} callhook {self.var_dir} "{self.project}" "{instance}" stop'
        return [f"{_POST_STOP} =", f"{_POST_STOP} = {hook}"]


def included_post_stop_hooks(conf_d: Path = COMMON_CONF_D) -> bool:
    """Whether LXC's included configuration adds post-stop hooks of its own."""
    try:
        files = sorted(conf_d.glob("*.conf"))
    except OSError:
        return False
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if any(line.strip().startswith(_POST_STOP) for line in text.splitlines()):
            return True
    return False


def local_daemon(socket_path: str, server_pid: int, project: str) -> LocalDaemon | None:
    """The local daemon's hook ingredients; None when they cannot be known for sure (a
    binary replaced since the daemon started, a pid not visible here)."""
    try:
        executable = os.readlink(f"/proc/{server_pid}/exe")
    except OSError:
        return None
    if not executable.startswith("/") or executable.endswith(" (deleted)"):
        return None
    if any(c in executable + socket_path + project for c in "\"'\\ \n$`"):
        return None
    return LocalDaemon(executable, str(Path(socket_path).parent), project)


def fast_stop(incus: Incus) -> LocalDaemon | None:
    """The local daemon, when its containers would run a post-stop hook of LXC's
    include besides Incus's own; else None (nothing to leave out, or unknowable)."""
    if not incus.endpoint.is_local or not included_post_stop_hooks():
        return None
    try:
        with incus_errors():
            environment = incus.api.get().json()["metadata"]["environment"]
        pid = int(environment["server_pid"])
    except (EngineError, KeyError, TypeError, ValueError) as exc:
        logger.info("incus: keeping LXC's post-stop hooks (daemon unknown: %s)", exc)
        return None
    return local_daemon(incus.endpoint.address, pid, str(environment.get("project", "default")))
