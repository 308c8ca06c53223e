"""exec through the guest agent: guest-exec of the wrapper, status polling, kill on timeout.

qemu-ga hands back a command's output when the command ends, so output arrives as one
chunk per stream, and at most about 3 MiB of it (libvirt's 4 MiB message limit). A stdin
too big to travel inline is written to a root-only guest file first, in pieces, which
the wrapper opens as the command's stdin.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Mapping
from typing import Any

from sandboxer.backend import (
    EngineError,
    ExecGenerator,
    ExecRequest,
    ExitStatus,
    OutputTooLarge,
    logger,
)

from ._agent import WRITE_CHUNK, Agent
from ._guest_scripts import BUILTIN, STAGING_DIR, GuestLayout

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INLINE_STDIN_MAX = WRITE_CHUNK
# Polling backs off from an immediate first look to at most this pause.
FIRST_PAUSE, MAX_PAUSE = 0.001, 0.02
KILL_GRACE = 10.0
# What one guest-exec-status reply can carry (libvirt's 4 MiB message, base64 inside).
AGENT_OUTPUT_MAX = 3 * 1024 * 1024


# The wrapper runs as root: its own environment is this, never the caller's.
WRAPPER_ENV = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin",)


def environment(env: Mapping[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in {"PATH": DEFAULT_PATH, **env}.items()]


def wrapper_args(
    exec_id: str,
    request: ExecRequest,
    stdin_file: str = "",
    stdout_file: str = "",
    stderr_file: str = "",
) -> list[str]:
    """Arguments of the guest's exec wrapper (see `_guest_scripts.EXEC`): the caller's
    environment travels as NAME=VALUE data, applied by `env` after privileges drop."""
    argv = list(request.argv)
    if "=" in argv[0]:
        argv = ["/bin/sh", "-c", 'exec "$@"', "sh", *argv]  # env would read it as a variable
    return [
        exec_id,
        request.workdir or "",
        request.user or "",
        stdin_file,
        stdout_file,
        stderr_file,
        "--",
        *environment(request.env),
        *argv,
    ]


def run_to_end(agent: Agent, path: str, args: list[str]) -> None:
    """A short helper command as root, waited for (so qemu-ga forgets it)."""
    pid = agent.spawn(path, args, capture=False)
    for _ in range(200):
        if agent.status(pid).get("exited"):
            return
        time.sleep(0.01)
    logger.warning("guest helper %s %s did not finish", path, args)


def _wait(
    agent: Agent, pid: int, exec_id: str, timeout: float | None, layout: GuestLayout
) -> tuple[dict[str, Any], bool]:
    deadline = None if timeout is None else time.monotonic() + timeout
    pause, timed_out = 0.0, False
    while True:
        status = agent.status(pid)
        if status.get("exited"):
            return status, timed_out
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            if timed_out:
                raise EngineError(f"exec {exec_id} survived SIGKILL for {KILL_GRACE:.0f} s")
            # Everything the command started is in its own cgroup: kill all of it.
            run_to_end(agent, *layout.command(layout.kill_path, [exec_id]))
            timed_out, deadline = True, now + KILL_GRACE
            continue
        pause = min(MAX_PAUSE, pause * 2 or FIRST_PAUSE)
        time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - now)))


def exit_code(status: Mapping[str, Any]) -> int:
    """The shell convention for a process killed by a signal: 128 + the signal."""
    if "signal" in status:
        return 128 + int(status["signal"])
    return int(status.get("exitcode", -1))


def exec_command(
    agent: Agent, request: ExecRequest, stdout_file: str = "", layout: GuestLayout = BUILTIN
) -> ExecGenerator:
    """Run `request` through the wrapper; stdout goes to a guest file when one is given."""
    exec_id = uuid.uuid4().hex[:12]
    stdin = request.stdin
    stdin_file = "-" if stdin else ""
    if stdin is not None and len(stdin) > INLINE_STDIN_MAX:
        stdin_file = f"{STAGING_DIR}/in-{exec_id}"
        agent.write_file(stdin_file, stdin)
        stdin = None
    path, args = layout.command(
        layout.exec_path, wrapper_args(exec_id, request, stdin_file, stdout_file)
    )
    pid = agent.spawn(path, args, WRAPPER_ENV, stdin)
    try:
        status, timed_out = _wait(agent, pid, exec_id, request.timeout, layout)
    except EngineError as exc:
        if "encode message" in str(exc) or "No complete agent response" in str(exc):
            # The command ended (or was killed); its output stays with qemu-ga.
            raise OutputTooLarge(
                f"the output of {request.argv[0]!r}",
                AGENT_OUTPUT_MAX,
                "the guest agent cannot return more; write it to a file in the sandbox "
                "and use read_file(path, into=...)",
            ) from exc
        raise
    if status.get("out-truncated") or status.get("err-truncated"):
        logger.warning("qemu-ga truncated the output of %s", request.argv[0])
    for stream, key in (("stdout", "out-data"), ("stderr", "err-data")):
        data = base64.b64decode(status.get(key, ""))
        if data:
            yield stream, data
    return ExitStatus(exit_code=-1 if timed_out else exit_code(status), timed_out=timed_out)
