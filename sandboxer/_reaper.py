"""A sandbox's max_lifetime, held by a small host process of its own.

None of the three engines has a timer that removes an instance: Docker, Incus and
libvirt can only remove one when it stops (AutoRemove, ephemeral, transient), and each
of those ties removal to the sandbox's main process, losing the logs and exit status of
a command that ends early and the stop/start cycle. An in-sandbox timer would run where
everything is hostile. And the owner may be killed with SIGKILL before the end. So launch
starts a detached process in its own session (a SIGKILL of the owner, or of its process
group, does not reach it) that sleeps until the deadline and then removes the sandbox by
its launch id, the same call `destroy()` makes. It leaves early once the sandbox is gone.

gc is the backstop for what ends the reaper too (a host reboot, an OOM kill): every
sandbox whose `sandboxer.expires` label has passed is garbage, kept or not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from ._backend import Backend
from ._errors import SandboxError
from ._labels import LAUNCH
from ._log import logger
from ._registry import get_backend

# How often a waiting reaper checks that its sandbox still exists (so it does not wait
# out a day-long lifetime for a sandbox destroyed after a minute).
CHECK_SECONDS = 30.0
# Removal attempts at the deadline, a few seconds apart (an engine restarting).
_ATTEMPTS = 5


def start_reaper(backend: str, name: str, launch: str, expires: float) -> None:
    """Start the process that removes sandbox `name` (of launch `launch`) on `backend`
    at `expires` (seconds since the epoch)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
    argv = [sys.executable, "-m", "sandboxer._reaper", backend, name, launch, repr(expires)]
    # Through a shell that starts it in the background and exits at once: the reaper is
    # nobody's child here, so it leaves no zombie and no running Popen behind.
    subprocess.run(
        ["/bin/sh", "-c", '"$@" &', "sh", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        cwd="/",
        env=env,
        check=True,
        timeout=30,
    )
    logger.debug("reaper for %s on %s started: expires at %.3f", name, backend, expires)


def exists(backend: Backend, launch: str) -> bool:
    """Whether the engine still holds anything of launch `launch` (a stopped sandbox,
    or what one left behind)."""
    found = backend.list_sandboxes() + backend.leftovers()
    return any(info.labels.get(LAUNCH) == launch for info in found)


def reap(
    backend: Backend,
    name: str,
    launch: str,
    expires: float,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait until `expires`, then remove the sandbox; False if it went before that."""
    while (left := expires - clock()) > 0:
        sleep(min(left, CHECK_SECONDS))
        if not exists(backend, launch):
            return False
    for _ in range(_ATTEMPTS - 1):
        try:
            backend.remove(name, launch)
            return True
        except SandboxError as exc:
            logger.info("reaper: removing %s failed, trying again: %s", name, exc)
            sleep(2.0)
    backend.remove(name, launch)
    return True


def main(argv: Sequence[str]) -> int:
    backend, name, launch, expires = argv
    try:
        reap(get_backend(backend), name, launch, float(expires))
    except SandboxError as exc:
        logger.warning("reaper: could not remove %s on %s (gc will): %s", name, backend, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
