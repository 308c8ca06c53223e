"""The one error tree every sandboxer call raises from."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import ExecResult


class SandboxError(Exception):
    """Base of every error sandboxer raises."""


class InvalidSpec(SandboxError, ValueError):
    """A spec, profile or argument is invalid; raised before any engine is touched."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class BackendUnavailable(SandboxError):
    """An engine or its SDK cannot be used; the message says why and how to fix it."""

    def __init__(self, backend: str, reason: str, fix: str | None = None) -> None:
        self.backend = backend
        self.reason = reason
        self.fix = fix
        text = f"backend {backend!r} is unavailable: {reason}"
        super().__init__(f"{text}\n  fix: {fix}" if fix else text)


class ImageNotFound(SandboxError):
    """The image does not exist on the engine and cannot be built."""


class ImagePullFailed(ImageNotFound):
    """The registry could not give the image: unreachable, unknown name or tag, refused
    credentials, or content that does not match its digest."""


class SandboxNotFound(SandboxError):
    """The sandbox does not exist (any more) on its engine."""


class UnsupportedFeature(SandboxError):
    """A backend cannot honour part of a spec or profile; it refuses instead of ignoring it."""


class ExecTimeout(SandboxError, TimeoutError):
    """An exec ran past its timeout and the caller asked for an exception; or a spawned
    process did not end within a wait's timeout (`killed` False: it still runs)."""

    def __init__(
        self,
        argv: tuple[str, ...],
        timeout: float,
        stdout: bytes,
        stderr: bytes,
        *,
        killed: bool = True,
    ) -> None:
        self.argv = argv
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
        self.killed = killed
        # argv[0] only: the arguments can hold secrets, and messages end up in logs.
        command = argv[0] if argv else "the command"
        fate = "was killed" if killed else "is still running"
        super().__init__(f"{command!r} did not finish within {timeout}s and {fate}")


class NotReady(SandboxError, TimeoutError):
    """A wait (`wait_for_port`, `wait_for_log`, `wait_for`) passed its deadline; the message
    says what was awaited and ends with the sandbox's last log lines."""

    def __init__(self, awaited: str, timeout: float, last_logs: str) -> None:
        self.awaited = awaited
        self.timeout = timeout
        self.last_logs = last_logs
        tail = f"\nlast log lines:\n{last_logs}" if last_logs else "\n(the sandbox logged nothing)"
        super().__init__(f"{awaited}: not within {timeout}s{tail}")


class OutputTooLarge(SandboxError):
    """A sandbox sent more than a cap allows; the message names the cap and how to raise it.

    For exec, the command was killed at the cap and `result` is the partial result
    (`truncated` set): what fitted in memory, the rest discarded.
    """

    def __init__(
        self,
        what: str,
        limit: int,
        fix: str,
        result: ExecResult | None = None,
        *,
        unit: str = "bytes",
    ) -> None:
        self.what = what
        self.limit = limit
        self.fix = fix
        self.result = result
        super().__init__(f"{what} passed its cap of {limit} {unit}; {fix}")


class CommandFailed(SandboxError):
    """A command exited non-zero (or timed out) and the caller asked for success
    (`ExecResult.check()`); `result` is the whole result, the message shows the output's tail."""

    TAIL = 2000  # characters of stderr (else stdout) the message shows

    def __init__(self, result: ExecResult) -> None:
        self.result = result
        status = "timed out" if result.timed_out else f"exited with code {result.exit_code}"
        output = result.stderr or result.stdout
        tail = output[-self.TAIL :].decode("utf-8", "replace").rstrip()
        # The argv is not shown: its arguments can hold secrets, and messages end up in logs.
        super().__init__(
            f"the command {status}" + (f"; its output ends with:\n{tail}" if tail else "")
        )


class EngineError(SandboxError):
    """The engine refused or failed an operation that has no more specific error."""


class SandboxFileNotFound(SandboxError, FileNotFoundError):
    """A path asked for inside a sandbox does not exist there."""


class SandboxFileError(SandboxError, OSError):
    """A file call failed on a path inside a sandbox; `errno` says why (ENOTDIR, EEXIST,
    ENOTEMPTY, ...)."""


class SandboxPermissionError(SandboxFileError, PermissionError):
    """The sandbox's user may not do that to a path (file calls run as that user)."""


class SandboxExists(SandboxError):
    """A sandbox with the requested name already exists on the engine."""
