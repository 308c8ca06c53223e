"""`Sandbox`: the one object users hold, the same on every backend."""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import signal
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType

from ._backend import (
    Backend,
    ControlStatus,
    ExecGenerator,
    ExecRequest,
    ExitStatus,
    Handle,
    LaunchPlan,
    SandboxState,
    drain,
    single_file_archive,
)
from ._errors import EngineError, ExecTimeout, InvalidSpec, SandboxNotFound
from ._log import logger, timed
from ._models import ExecResult, SandboxSpec

# A timed-out command is reported as killed by SIGKILL, whatever the engine says.
TIMEOUT_EXIT_CODE = -signal.SIGKILL


def _argv(command: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(command, str):
        return ("/bin/sh", "-c", command)
    argv = tuple(command)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidSpec("command", f"expected a non-empty list of strings, got {command!r}")
    return argv


def _sandbox_path(field: str, path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise InvalidSpec(field, f"expected an absolute path inside the sandbox, got {path!r}")
    normal = posixpath.normpath(path)
    if normal == "/":
        raise InvalidSpec(field, "cannot be the sandbox's root '/'")
    return normal


class ExecStream:
    """Iterate over ("stdout" | "stderr", bytes) as output arrives; then read the status."""

    def __init__(self, generator: ExecGenerator, request: ExecRequest) -> None:
        self._generator = generator
        self._request = request
        self._started = time.monotonic()
        self.exit_code: int | None = None
        self.timed_out = False
        self.duration: float | None = None

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        status: ExitStatus = yield from self._generator
        self.duration = time.monotonic() - self._started
        self.timed_out = status.timed_out
        self.exit_code = TIMEOUT_EXIT_CODE if status.timed_out else status.exit_code


class Sandbox:
    """A running sandbox. Leaving its `with` block (or `destroy()`) removes it."""

    def __init__(
        self,
        backend: Backend,
        handle: Handle,
        plan: LaunchPlan,
        enforcement: Mapping[str, ControlStatus],
        on_destroy: list[object],
    ) -> None:
        self._backend = backend
        self._handle = handle
        self._plan = plan
        self._enforcement = MappingProxyType(dict(enforcement))
        self._destroyed = False
        self._lock = threading.Lock()
        self._registry = on_destroy

    def __repr__(self) -> str:
        return f"<Sandbox {self.name} on {self.backend} ({self.id[:12]})>"

    @property
    def id(self) -> str:
        return self._handle.id

    @property
    def name(self) -> str:
        return self._handle.name

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def spec(self) -> SandboxSpec:
        return self._plan.spec

    @property
    def labels(self) -> Mapping[str, str]:
        return self._plan.labels

    @property
    def ports(self) -> dict[int, tuple[str, int]]:
        """guest port -> (host ip, host port) where it is reachable from the host."""
        return {p.guest_port: (p.host_ip, p.host_port or 0) for p in self._plan.ports}

    @property
    def enforcement(self) -> Mapping[str, ControlStatus]:
        """Each control the profile asked for: enforced (and how), or why not."""
        return self._enforcement

    @property
    def state(self) -> SandboxState:
        if self._destroyed:
            return SandboxState.DESTROYED
        return self._backend.state(self._handle)

    def _live_handle(self) -> Handle:
        if self._destroyed:
            raise SandboxNotFound(f"sandbox {self.name} was destroyed")
        return self._handle

    def _request(
        self,
        command: Sequence[str] | str,
        timeout: float | None,
        env: Mapping[str, str] | None,
        workdir: str | None,
        user: str | None,
        stdin: bytes | str | None,
    ) -> ExecRequest:
        if timeout is not None and not timeout > 0:
            raise InvalidSpec("timeout", f"must be positive, got {timeout!r}")
        if isinstance(stdin, str):
            stdin = stdin.encode()
        return ExecRequest(
            argv=_argv(command),
            env={**self.spec.env, **(env or {})},
            workdir=_sandbox_path("workdir", workdir) if workdir else self.spec.workdir,
            user=user if user is not None else self._plan.user,
            stdin=stdin,
            timeout=timeout,
        )

    def exec_stream(
        self,
        command: Sequence[str] | str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        stdin: bytes | str | None = None,
    ) -> ExecStream:
        """Run a command and stream its output; a str is run with /bin/sh -c."""
        request = self._request(command, timeout, env, workdir, user, stdin)
        return ExecStream(self._backend.exec(self._live_handle(), request), request)

    def exec(
        self,
        command: Sequence[str] | str,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        stdin: bytes | str | None = None,
        raise_on_timeout: bool = False,
    ) -> ExecResult:
        """Run a command to its end; past `timeout` it is killed and `timed_out` is set."""
        request = self._request(command, timeout, env, workdir, user, stdin)
        started = time.monotonic()
        with timed("exec", sandbox=self.name, argv=request.argv[:3]):
            status, out, err = drain(self._backend.exec(self._live_handle(), request))
        if status.timed_out and raise_on_timeout:
            raise ExecTimeout(request.argv, timeout or 0.0, out, err)
        return ExecResult(
            exit_code=TIMEOUT_EXIT_CODE if status.timed_out else status.exit_code,
            stdout=out,
            stderr=err,
            timed_out=status.timed_out,
            duration=time.monotonic() - started,
        )

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Create or replace a file inside the sandbox (its directory must exist)."""
        path = _sandbox_path("path", path)
        payload = data.encode() if isinstance(data, str) else data
        directory, base = posixpath.split(path)
        self._backend.put_archive(
            self._live_handle(), directory, single_file_archive(base, payload, mode)
        )

    def read_file(self, path: str) -> bytes:
        """A file's bytes; SandboxFileNotFound if it does not exist."""
        path = _sandbox_path("path", path)
        archive = self._backend.get_archive(self._live_handle(), path)
        try:
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                member = tar.next()
                if member is None or not member.isfile():
                    raise EngineError(f"not a regular file in the sandbox: {path}")
                stream = tar.extractfile(member)
                assert stream is not None  # a regular file always has content
                return stream.read()
        except tarfile.TarError as exc:
            raise EngineError(f"unreadable archive of {path} from the sandbox: {exc}") from exc

    def copy_in(self, host_path: str | os.PathLike[str], sandbox_path: str) -> None:
        """Copy a host file or directory tree to `sandbox_path` (the new entry's full path)."""
        source = Path(host_path)
        if not source.exists():
            raise InvalidSpec("host_path", f"does not exist: {source}")
        target = _sandbox_path("sandbox_path", sandbox_path)
        directory, base = posixpath.split(target)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(str(source), arcname=base)
        self._backend.put_archive(self._live_handle(), directory, buffer.getvalue())

    def copy_out(self, sandbox_path: str, host_path: str | os.PathLike[str]) -> None:
        """Copy a sandbox file or directory tree to `host_path` (the new entry's full path)."""
        source = _sandbox_path("sandbox_path", sandbox_path)
        destination = Path(host_path)
        archive = self._backend.get_archive(self._live_handle(), source)
        with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
            try:
                with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                    # The sandbox is untrusted: the "data" filter refuses absolute paths,
                    # "..", links leaving the tree and device files.
                    tar.extractall(scratch, filter="data")
            except tarfile.TarError as exc:
                raise EngineError(f"unsafe archive of {source} from the sandbox: {exc}") from exc
            top = os.path.join(scratch, posixpath.basename(source))
            if not os.path.lexists(top):
                raise EngineError(f"the sandbox's archive of {source} does not hold it")
            shutil.move(top, destination)

    def logs(self) -> str:
        """What the sandbox's main process (or console) printed."""
        return self._backend.logs(self._live_handle())

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully, forcing after `timeout` seconds; destroy() still removes it."""
        with timed("stop", sandbox=self.name):
            self._backend.stop(self._live_handle(), timeout)

    def destroy(self) -> None:
        """Remove the sandbox and all it made on the engine. Safe to call more than once."""
        with self._lock:
            if self._destroyed:
                return
            with timed("remove", sandbox=self.name, backend=self.backend):
                self._backend.remove(self._handle.name)
            self._destroyed = True
        if self in self._registry:
            self._registry.remove(self)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.destroy()
        except Exception:
            if exc is None:
                raise
            # Do not hide the error that ended the block behind a cleanup failure.
            logger.exception("destroying %s after an error failed", self.name)
