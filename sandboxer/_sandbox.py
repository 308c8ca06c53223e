"""`Sandbox`: the one object users hold, the same on every backend."""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import os
import posixpath
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Literal, overload

import attrs

from . import _arguments as arguments
from . import _file_ops as file_ops
from . import _readiness as readiness
from ._backend import (
    Backend,
    ControlStatus,
    ExecGenerator,
    ExecRequest,
    ExitStatus,
    Handle,
    LaunchPlan,
    ProcessRequest,
    SandboxState,
    pump,
    single_file_archive,
)
from ._errors import (
    ExecTimeout,
    InvalidSpec,
    OutputTooLarge,
    SandboxFileError,
    SandboxFileNotFound,
    SandboxNotFound,
)
from ._extract import destination, extract
from ._file_ops import DirEntry, FileStat
from ._files import host_target, read_member, read_to_memory
from ._labels import LAUNCH
from ._live import LiveSandboxes
from ._log import logger, timed
from ._models import ExecResult, SandboxSpec
from ._output import (
    DEFAULT_MAX_DISK,
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_OUTPUT,
    TAR_OVERHEAD,
    TAR_OVERHEAD_PER_MEMBER,
    BinaryWriter,
    Collector,
    TarStream,
    Writer,
    as_writer,
    limit_argument,
)
from ._pinned import pinned_again
from ._process import TIMEOUT_EXIT_CODE, Process
from ._pty import Pty, terminal_size
from ._vocabulary import Protocol, member

# Seconds a file call (write_file, read_file, copy_in, copy_out) may take by default.
FILE_TIMEOUT = 120.0


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
        spec: SandboxSpec,
        plan: LaunchPlan,
        enforcement: Mapping[str, ControlStatus],
        live: LiveSandboxes | None,
    ) -> None:
        self._backend = backend
        self._handle = handle
        self._spec = spec
        self._plan = plan
        self._enforcement = MappingProxyType(dict(enforcement))
        self._destroyed = False
        self._lock = threading.Lock()
        self._live = live  # where this process keeps it until it is destroyed

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
        return self._spec

    @property
    def labels(self) -> Mapping[str, str]:
        return self._plan.labels

    @property
    def ports(self) -> dict[int, tuple[str, int]]:
        """tcp guest port -> (host ip, host port) where it is reachable from the host;
        `port()` reaches udp mappings too."""
        return {
            p.guest_port: (p.host_ip, p.host_port or 0)
            for p in self._plan.ports
            if p.protocol == Protocol.TCP
        }

    def port(self, guest_port: int, protocol: str = "tcp") -> tuple[str, int]:
        """(host ip, host port) where `guest_port` over `protocol` is reachable from the host."""
        wanted = member(Protocol, "protocol", protocol)
        for p in self._plan.ports:
            if p.guest_port == guest_port and p.protocol == wanted:
                return p.host_ip, p.host_port or 0
        mapped = ", ".join(f"{p.guest_port}/{p.protocol}" for p in self._plan.ports)
        raise InvalidSpec(
            "guest_port",
            f"no {wanted} mapping of guest port {guest_port!r}; mapped: {mapped or 'none'}",
        )

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
        return ExecRequest(
            argv=arguments.command(command),
            env={**self.spec.env, **arguments.environment(env)},
            workdir=arguments.workdir(workdir) if workdir is not None else self.spec.workdir,
            user=arguments.user(user) if user is not None else self._plan.user,
            stdin=arguments.stdin(stdin),
            timeout=None if timeout is None else arguments.timeout(timeout),
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
        """Run a command and stream its output; a str is run with /bin/sh -c.

        Nothing is buffered here: each chunk is handed over as it arrives. Stopping early
        (`break`, or closing the iteration) kills the command.
        """
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
        stdout: BinaryWriter | Writer | None = None,
        stderr: BinaryWriter | Writer | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> ExecResult:
        """Run a command to its end; past `timeout` it is killed and `timed_out` is set.

        `stdout`/`stderr` take a binary file object or a callable: that stream goes there
        as it arrives and not into the result. What stays in memory is capped at
        `max_output` bytes (both streams together): past it the command is killed, and
        OutputTooLarge is raised with the partial result (`truncated` set) as `.result`.
        """
        request = self._request(command, timeout, env, workdir, user, stdin)
        limit = limit_argument("max_output", max_output, DEFAULT_MAX_OUTPUT)
        collector = Collector(limit, as_writer("stdout", stdout), as_writer("stderr", stderr))
        started = time.monotonic()
        status: ExitStatus | None = None
        try:
            with timed("exec", sandbox=self.name, command=request.argv[0]):
                status = pump(self._backend.exec(self._live_handle(), request), collector)
        except OutputTooLarge as exc:  # an engine's own limit (the VM's guest agent)
            exc.result = exc.result or self._result(status, collector, started, True)
            raise
        if status is None:
            raise OutputTooLarge(
                f"the output of {request.argv[0]!r}",
                limit,
                "pass exec(max_output=...) a bigger cap, or stdout=/stderr= a file or a "
                "callable to stream it",
                self._result(None, collector, started, True),
            )
        if status.timed_out and raise_on_timeout:
            out, err = collector.output("stdout"), collector.output("stderr")
            raise ExecTimeout(request.argv, timeout or 0.0, out, err)
        return self._result(status, collector, started, False)

    @staticmethod
    def _result(
        status: ExitStatus | None, collector: Collector, started: float, truncated: bool
    ) -> ExecResult:
        finished = status is not None and not status.timed_out  # a cap (None) kills too
        return ExecResult(
            exit_code=status.exit_code if status is not None and finished else TIMEOUT_EXIT_CODE,
            stdout=collector.output("stdout"),
            stderr=collector.output("stderr"),
            timed_out=status is not None and status.timed_out,
            duration=time.monotonic() - started,
            truncated=truncated,
        )

    def spawn(
        self,
        command: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> Process:
        """Start a command and return at once: write to its stdin, read its output as it
        arrives, wait for it or kill it (see `Process`). Past `timeout` it is killed with
        all it started, as for exec; its output is kept up to `max_output` bytes."""
        request = self._request(command, timeout, env, workdir, user, None)
        limit = limit_argument("max_output", max_output, DEFAULT_MAX_OUTPUT)
        with timed("spawn", sandbox=self.name, command=request.argv[0]):
            channel = self._backend.start_process(self._live_handle(), ProcessRequest(exec=request))
        return Process(channel, request.argv, limit)

    def pty(
        self,
        command: Sequence[str] | str = ("/bin/sh",),
        *,
        size: tuple[int, int] = (24, 80),
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> Pty:
        """Start a command (a shell by default) on a terminal of `size` (rows, cols) and
        return at once (see `Pty`). TERM is xterm unless the spec or `env` sets it."""
        request = self._request(command, timeout, env, workdir, user, None)
        terminal = terminal_size(size)
        request = attrs.evolve(request, env={"TERM": "xterm", **request.env})
        with timed("pty", sandbox=self.name, command=request.argv[0]):
            channel = self._backend.start_process(
                self._live_handle(), ProcessRequest(exec=request, terminal=terminal)
            )
        return Pty(channel, request.argv)

    def write_file(
        self,
        path: str,
        data: bytes | str,
        mode: int = 0o644,
        *,
        parents: bool = False,
        timeout: float = FILE_TIMEOUT,
    ) -> None:
        """Create or replace a file inside the sandbox; its directory must exist, unless
        `parents` (then missing ones are made as `mkdir(parents=True)` makes them)."""
        path = arguments.sandbox_path("path", path)
        if not isinstance(data, bytes | str):
            raise InvalidSpec("data", f"expected bytes or str, got {type(data).__name__}")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise InvalidSpec("mode", f"expected permission bits (0 to 0o7777), got {mode!r}")
        payload = data.encode() if isinstance(data, str) else data
        directory, base = posixpath.split(path)
        seconds = arguments.timeout(timeout)
        archive = single_file_archive(base, payload, mode)
        if file_ops.flag("parents", parents) and directory != "/":
            self._file_call(file_ops.mkdir_call(directory, True, True, 0o755), seconds)
        self._backend.put_archive(self._live_handle(), directory, archive, seconds)

    def read_file(
        self,
        path: str,
        *,
        into: BinaryWriter | str | os.PathLike[str] | None = None,
        max_size: int | None = None,
        timeout: float = FILE_TIMEOUT,
    ) -> bytes:
        """A file's bytes; SandboxFileNotFound if it does not exist.

        With `into` (a binary file object, or a host path: created or truncated, never
        followed if it is a symlink) the file is streamed there and b"" returned.
        `max_size` caps the file: 64 MiB in memory, 4 GiB into a file by default; past it
        OutputTooLarge. Past `timeout` seconds the copy is killed: ExecTimeout.
        """
        path = arguments.sandbox_path("path", path)
        default = DEFAULT_MAX_OUTPUT if into is None else DEFAULT_MAX_DISK
        limit = limit_argument("max_size", max_size, default)
        seconds = arguments.timeout(timeout)
        handle = self._live_handle()
        if into is None:
            with self._archive(handle, path, seconds, limit) as stream:
                return read_to_memory(stream, path, limit)
        with host_target(into) as write, self._archive(handle, path, seconds, limit) as stream:
            read_member(stream, path, write, limit)
        return b""

    @contextlib.contextmanager
    def _archive(
        self, handle: Handle, path: str, timeout: float, limit: int
    ) -> Iterator[TarStream]:
        """The sandbox's tar stream of `path`; leaving early kills the packing."""
        chunks = self._backend.get_archive(handle, path, timeout, limit + TAR_OVERHEAD)
        with timed("get_archive", sandbox=self.name), contextlib.closing(chunks):
            yield TarStream(chunks, path)

    def copy_in(
        self,
        host_path: str | os.PathLike[str],
        sandbox_path: str,
        *,
        timeout: float = FILE_TIMEOUT,
    ) -> None:
        """Copy a host file or directory tree to `sandbox_path` (the new entry's full path)."""
        try:
            source = Path(host_path)
        except TypeError:
            raise InvalidSpec("host_path", f"expected a host path, got {host_path!r}") from None
        if "\0" in str(source) or not source.exists():
            raise InvalidSpec("host_path", f"does not exist: {source}")
        target = arguments.sandbox_path("sandbox_path", sandbox_path)
        seconds = arguments.timeout(timeout)
        directory, base = posixpath.split(target)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(str(source), arcname=base)
        self._backend.put_archive(self._live_handle(), directory, buffer.getvalue(), seconds)

    def copy_out(
        self,
        sandbox_path: str,
        host_path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        timeout: float = FILE_TIMEOUT,
        max_size: int | None = None,
        max_members: int | None = None,
    ) -> None:
        """Copy a sandbox file or directory tree to `host_path`: the new entry's full path.

        Symlinks in host_path's directory part are the caller's and are followed; nothing
        at or below host_path is. An existing host_path is refused unless `overwrite`,
        and then replaced (never entered). The tree is checked as it is unpacked (see
        `sandboxer._extract`): capped at `max_size` bytes (4 GiB) and `max_members`
        entries (100000) by default, OutputTooLarge past either; ExecTimeout past
        `timeout` seconds. Nothing lands at host_path unless the whole copy succeeded.
        """
        source = arguments.sandbox_path("sandbox_path", sandbox_path)
        parent, name = destination(host_path, "host_path")
        if not isinstance(overwrite, bool):
            raise InvalidSpec("overwrite", f"expected True or False, got {overwrite!r}")
        if not overwrite and os.path.lexists(parent / name):
            raise InvalidSpec("host_path", f"{parent / name} exists; pass overwrite=True")
        limit = limit_argument("max_size", max_size, DEFAULT_MAX_DISK)
        members = limit_argument("max_members", max_members, DEFAULT_MAX_MEMBERS)
        seconds = arguments.timeout(timeout)
        overhead = members * TAR_OVERHEAD_PER_MEMBER
        with self._archive(self._live_handle(), source, seconds, limit + overhead) as stream:
            top = posixpath.basename(source)
            extract(
                stream, top, parent, name, overwrite=overwrite, max_size=limit, max_members=members
            )

    def wait_for_port(
        self,
        guest_port: int,
        protocol: str = "tcp",
        *,
        timeout: float = 60.0,
        interval: float = 0.2,
    ) -> None:
        """Return once something listens on `guest_port`; NotReady (a TimeoutError, with
        the last log lines) after `timeout` seconds.

        A published TCP port is checked from the host, through the mapping (so the path
        a client takes works too); any other is read from the sandbox's /proc/net tables
        by a command inside it (`cat`, which the image must have).
        """
        port = readiness.guest_port_argument(guest_port)
        wanted = readiness.protocol_argument(protocol)
        seconds, every = readiness.wait_arguments(timeout, interval)
        published = [p for p in self._plan.ports if p.guest_port == port and p.protocol == wanted]
        check: Callable[[], bool]
        if published and wanted == Protocol.TCP:
            host, host_port = published[0].host_ip, published[0].host_port or 0
            check = functools.partial(readiness.accepts_on_host, host, host_port)
        else:
            argv = readiness.net_table_argv(wanted)

            def check() -> bool:
                result = self.exec(argv, timeout=max(1.0, every * 10))
                table = readiness.checked_table(result, argv)
                return readiness.listening_in(table, port, wanted)

        awaited = f"{self.name}: waiting for {port}/{wanted} to listen"
        readiness.deadline_loop(lambda: check() or None, awaited, seconds, every, self.logs)

    def wait_for_log(
        self, pattern: str | re.Pattern[str], *, timeout: float = 60.0, interval: float = 0.2
    ) -> str:
        """The first line of the logs `pattern` (a regular expression) matches in, once one
        does; NotReady (a TimeoutError, with the last log lines) after `timeout` seconds."""
        compiled = readiness.pattern_argument(pattern)
        seconds, every = readiness.wait_arguments(timeout, interval)
        awaited = f"{self.name}: waiting for a log line matching {compiled.pattern!r}"
        return readiness.deadline_loop(
            lambda: readiness.matching_line(compiled, self.logs()),
            awaited,
            seconds,
            every,
            self.logs,
        )

    def wait_for(
        self,
        command: Sequence[str] | str,
        *,
        timeout: float = 60.0,
        interval: float = 0.5,
        user: str | None = None,
    ) -> ExecResult:
        """Run `command` until it exits 0 and return that result; NotReady (a TimeoutError,
        with the last log lines) after `timeout` seconds. Each try is killed at the
        deadline."""
        argv = arguments.command(command)
        seconds, every = readiness.wait_arguments(timeout, interval)
        deadline = time.monotonic() + seconds

        def succeeded() -> ExecResult | None:
            left = max(0.1, deadline - time.monotonic())
            result = self.exec(argv, timeout=left, user=user)
            return result if result.exit_code == 0 else None

        awaited = f"{self.name}: waiting for {argv[0]!r} to succeed"
        return readiness.deadline_loop(succeeded, awaited, seconds, every, self.logs)

    # listdir, stat, exists, remove, mkdir: see sandboxer._file_ops ----------------------
    def _file_call(self, call: file_ops.FileCall, timeout: float) -> bytes:
        """Run one file call as the sandbox's user (as exec runs commands), with the
        adapter's busybox; its stdout, else the error it failed with."""
        handle = self._live_handle()
        request = call.request(self._backend.busybox(handle), self._plan.user, timeout)
        with timed(f"file {call.verb}", sandbox=self.name):
            return file_ops.run(call, self._backend.exec(handle, request), timeout)

    @overload
    def listdir(
        self,
        path: str,
        *,
        detail: Literal[False] = False,
        max_entries: int | None = None,
        timeout: float = FILE_TIMEOUT,
    ) -> list[str]: ...
    @overload
    def listdir(
        self,
        path: str,
        *,
        detail: Literal[True],
        max_entries: int | None = None,
        timeout: float = FILE_TIMEOUT,
    ) -> list[DirEntry]: ...
    def listdir(
        self,
        path: str,
        *,
        detail: bool = False,
        max_entries: int | None = None,
        timeout: float = FILE_TIMEOUT,
    ) -> list[str] | list[DirEntry]:
        """The names in a sandbox directory, sorted (without "." and ".."); with `detail`,
        `DirEntry`s: each name with its `FileStat` (a symlink reported as one).

        A symlink at `path` is followed, as `os.listdir` does. Names that are not UTF-8
        come with lone surrogates (surrogateescape) and mean the same bytes when passed
        back. More than `max_entries` (10000 by default): OutputTooLarge. An entry that
        goes away while it is listed is left out. SandboxFileNotFound if `path` is
        missing, SandboxPermissionError if the sandbox's user may not read it,
        SandboxFileError (ENOTDIR) if it is no directory.
        """
        call = file_ops.listdir_call(path, detail, max_entries)
        output = self._file_call(call, arguments.timeout(timeout))
        if detail:
            return file_ops.detailed_listing(output, call)
        return file_ops.listing(output, call)

    def stat(
        self, path: str, *, follow_symlinks: bool = False, timeout: float = FILE_TIMEOUT
    ) -> FileStat:
        """Type, size, permission bits, owner and mtime of a path in the sandbox. A symlink
        is reported as a symlink unless `follow_symlinks`. SandboxFileNotFound if missing."""
        call = file_ops.stat_call(path, follow_symlinks)
        return file_ops.stat_result(self._file_call(call, arguments.timeout(timeout)))

    def exists(
        self, path: str, *, follow_symlinks: bool = False, timeout: float = FILE_TIMEOUT
    ) -> bool:
        """Whether something is at `path`: a dangling symlink is something (it would have
        to be removed before a mkdir there) unless `follow_symlinks`. A path the user may
        not look into raises SandboxPermissionError rather than answer False."""
        call = file_ops.stat_call(path, follow_symlinks)
        try:
            self._file_call(call, arguments.timeout(timeout))
        except SandboxFileNotFound:
            return False
        except SandboxFileError as exc:
            if exc.errno != errno.ENOTDIR:  # a file where a directory should be: absent
                raise
            return False
        return True

    def remove(self, path: str, *, recursive: bool = False, timeout: float = FILE_TIMEOUT) -> None:
        """Remove a file, a symlink (the link, never what it points to) or an empty
        directory; a directory with entries only with `recursive` (SandboxFileError,
        ENOTEMPTY, without), which never follows a symlink either. What the sandbox's user
        may not remove raises SandboxPermissionError (a recursive removal may have removed
        part of the tree by then)."""
        call = file_ops.remove_call(path, recursive)
        self._file_call(call, arguments.timeout(timeout))

    def mkdir(
        self,
        path: str,
        *,
        parents: bool = False,
        exist_ok: bool = False,
        mode: int = 0o755,
        timeout: float = FILE_TIMEOUT,
    ) -> None:
        """Create a directory with `mode` (not narrowed by a umask; missing parents made
        with `parents` get the sandbox's default mode). An existing path raises
        SandboxFileError (EEXIST) unless `exist_ok` and it is a directory; a missing
        parent raises SandboxFileNotFound unless `parents`."""
        call = file_ops.mkdir_call(path, parents, exist_ok, mode)
        self._file_call(call, arguments.timeout(timeout))

    def logs(self) -> str:
        """What the sandbox's main process (or console) printed."""
        return self._backend.logs(self._live_handle())

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully, forcing after `timeout` seconds; destroy() still removes it."""
        with timed("stop", sandbox=self.name):
            self._backend.stop(self._live_handle(), timeout)

    def start(self) -> None:
        """Start a stopped sandbox again, under the same profile, limits, mounts and
        ports; what its file system keeps depends on the engine (docs/backends.md)."""
        with self._lock, timed("start", sandbox=self.name), pinned_again(self.labels):
            self._handle = self._backend.start(self._live_handle())

    def destroy(self) -> None:
        """Remove the sandbox and all it made on the engine. Safe to call more than once."""
        with self._lock:
            if self._destroyed:
                return
            with timed("remove", sandbox=self.name, backend=self.backend):
                self._backend.remove(self._handle.name, self._plan.labels.get(LAUNCH, ""))
            self._destroyed = True
        if self._live is not None:
            self._live.discard(self)

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
