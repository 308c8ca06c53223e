"""The asyncio API: the same sandboxes, awaited, so one event loop can drive many of them.

    async with sandboxer.aio.launch(image="sandboxer/minimal") as sb:
        result = await sb.exec(["echo", "hi"])
        async for stream, chunk in sb.exec_stream(["sh", "-c", "ls /"]):
            ...

How it works, honestly: the engine SDKs are blocking, so each engine call (launch, one
exec, one chunk of a stream, a file transfer, destroy) runs in a bounded thread pool of
this module's own and is awaited from the loop. A sandbox that is idle holds no thread,
so a loop can keep hundreds open; at most `max_threads` engine calls run at once
(default 64, or $SANDBOXER_AIO_THREADS). The loop's default executor is not used: it is
sized for the CPU count, which would serialise concurrent execs on a small machine.
Cancelling an awaited exec does not stop the command (as in the sync API, pass a
`timeout`): its thread is busy until the command ends. A spawned process or terminal
(`spawn`, `pty`) holds one thread of its own that reads its output while it runs;
awaiting its output or its end holds none (that thread wakes the loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import os
import re
import signal
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, overload

import attrs

from ._backend import ControlStatus, SandboxState
from ._errors import ExecTimeout
from ._file_ops import DirEntry, FileStat
from ._launch import launch as _launch_sync
from ._log import logger
from ._models import ExecResult, SandboxSpec
from ._output import DEFAULT_MAX_OUTPUT, BinaryWriter, Writer
from ._process import Process, Running, wait_timeout
from ._pty import Pty
from ._sandbox import FILE_TIMEOUT, ExecStream, Sandbox

__all__ = [
    "AsyncExecStream",
    "AsyncProcess",
    "AsyncPty",
    "AsyncSandbox",
    "launch",
    "max_threads",
    "set_max_threads",
]

T = TypeVar("T")
R = TypeVar("R", bound=Running)
_DEFAULT_THREADS = 64
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_max_threads = int(os.environ.get("SANDBOXER_AIO_THREADS", _DEFAULT_THREADS))
_END = object()  # marks the end of a stream without raising StopIteration into a future


def max_threads() -> int:
    """How many engine calls the asyncio API runs at once."""
    return _max_threads


def set_max_threads(count: int) -> None:
    """Resize the engine-call thread pool (takes effect for calls submitted from now on)."""
    global _executor, _max_threads
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"max_threads must be a positive integer, got {count!r}")
    with _executor_lock:
        old, _executor, _max_threads = _executor, None, count
    if old is not None:
        old.shutdown(wait=False)  # calls already running finish on the old threads


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=_max_threads, thread_name_prefix="sandboxer-aio"
            )
        return _executor


def _submit(function: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
    # Carry the caller's context (e.g. logging context vars) into the worker thread.
    call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
    return _pool().submit(call)


async def _run(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Await one blocking engine call on the module's thread pool."""
    return await asyncio.wrap_future(_submit(function, *args, **kwargs))


class AsyncExecStream:
    """`async for stream, chunk in ...` over a command's output; then read its status."""

    def __init__(self, stream: ExecStream) -> None:
        self._stream = stream
        self._iterator: Iterator[tuple[str, bytes]] | None = None

    @property
    def exit_code(self) -> int | None:
        return self._stream.exit_code

    @property
    def timed_out(self) -> bool:
        return self._stream.timed_out

    @property
    def duration(self) -> float | None:
        return self._stream.duration

    def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[tuple[str, bytes]]:
        if self._iterator is not None:
            raise RuntimeError("an exec stream can be iterated only once")
        iterator = self._iterator = iter(self._stream)
        step: concurrent.futures.Future[Any] | None = None
        ended = False
        try:
            while True:
                step = _submit(next, iterator, _END)
                item = await asyncio.wrap_future(step)
                if item is _END:
                    ended = True
                    return
                yield item
        finally:
            # Left early (break, cancel, error): close the engine stream off the loop, once
            # the read in flight has returned (a generator runs in one thread at a time).
            if step is not None and not ended:
                await asyncio.shield(_run(_close_after, step, iterator))


def _close_after(step: concurrent.futures.Future[Any], iterator: Iterator[Any]) -> None:
    concurrent.futures.wait([step])
    if isinstance(iterator, Generator):
        iterator.close()


class _Changes:
    """Wakes the loop's coroutines when a process's reading thread reports news, so that
    awaiting its output or its end holds no thread."""

    def __init__(self, running: Running) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        # One wake-up queued at a time: a busy loop must not pile up a callback per chunk
        # (a sandbox writing a byte at a time would grow the loop's queue without bound).
        self._pending = False
        running.watch(self._wake)

    def _wake(self) -> None:
        # Only the process's reading thread calls this; what it stored before a skipped
        # wake-up is seen when the queued one runs.
        if self._pending:
            return
        self._pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits
            self._loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:
        self._pending = False
        self._event.set()

    async def until(self, check: Callable[[], T | None], timeout: float | None) -> T | None:
        """What `check()` returns once it is not None; None if `timeout` passes first."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            self._event.clear()  # before the check: news after it sets it again
            found = check()
            if found is not None:
                return found
            left = None if deadline is None else deadline - self._loop.time()
            if left is not None and left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), left)


class _AsyncRunning(Generic[R]):
    """What AsyncProcess and AsyncPty share; signals and writes are engine calls, awaited
    on the pool."""

    def __init__(self, running: R) -> None:
        self.sync = running
        self._changes = _Changes(running)

    @property
    def pid(self) -> int | None:
        return self.sync.pid

    @property
    def argv(self) -> tuple[str, ...]:
        return self.sync.argv

    @property
    def running(self) -> bool:
        return self.sync.running

    @property
    def exit_code(self) -> int | None:
        return self.sync.exit_code

    @property
    def timed_out(self) -> bool:
        return self.sync.timed_out

    async def write(self, data: bytes | str) -> None:
        await _run(self.sync.write, data)

    async def kill(self, signum: int = signal.SIGKILL) -> None:
        await _run(self.sync.kill, signum)

    async def _ended(self, timeout: float | None) -> None:
        seconds = wait_timeout(timeout)
        if await self._changes.until(lambda: None if self.sync.running else True, seconds):
            return
        stdout, stderr = (
            (self.sync.stdout, self.sync.stderr) if isinstance(self.sync, Process) else (b"", b"")
        )
        raise ExecTimeout(self.sync.argv, seconds or 0.0, stdout, stderr, killed=False)

    async def close(self) -> None:
        """Kill it if it runs; not cancellable: once asked, it finishes."""
        await asyncio.shield(_run(self.sync.close))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncProcess(_AsyncRunning[Process]):
    """A spawned process driven from asyncio (see `Process`); `.sync` is the Process.
    Awaiting its output or its end holds no thread: its own reading thread wakes the loop."""

    @property
    def stdout(self) -> bytes:
        return self.sync.stdout

    @property
    def stderr(self) -> bytes:
        return self.sync.stderr

    async def close_stdin(self) -> None:
        await _run(self.sync.close_stdin)

    async def read(self, timeout: float | None = None) -> tuple[str, bytes] | None:
        """As `Process.read`: the next chunk; None past `timeout`; ("", b"") at the end."""
        return await self._changes.until(lambda: self.sync.read(0), wait_timeout(timeout))

    def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[tuple[str, bytes]]:
        while (chunk := await self.read()) is not None and chunk[1]:
            yield chunk

    async def wait(self, timeout: float | None = None) -> ExecResult:
        await self._ended(timeout)
        return self.sync.wait(0)

    async def __aenter__(self) -> AsyncProcess:
        return self


class AsyncPty(_AsyncRunning[Pty]):
    """A terminal driven from asyncio (see `Pty`); `.sync` is the Pty."""

    async def read(self, timeout: float | None = None, max_bytes: int = 65536) -> bytes | None:
        """As `Pty.read`: output not read yet; None past `timeout`; b"" at the end."""
        seconds = wait_timeout(timeout)
        return await self._changes.until(lambda: self.sync.read(0, max_bytes), seconds)

    async def resize(self, rows: int, cols: int) -> None:
        await _run(self.sync.resize, rows, cols)

    async def wait(self, timeout: float | None = None) -> int:
        await self._ended(timeout)
        return self.sync.wait(0)

    async def __aenter__(self) -> AsyncPty:
        return self


def _close_if_started(future: concurrent.futures.Future[Any]) -> None:
    """Done-callback for a spawn whose awaiter was cancelled: nobody will own it."""
    if not future.cancelled() and future.exception() is None:
        _pool().submit(future.result().close)


async def _started(future: concurrent.futures.Future[R]) -> R:
    """The process a spawn or pty call starts on the pool; closed if the awaiter is
    cancelled meanwhile."""
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_if_started)
        raise


class AsyncSandbox:
    """A running sandbox driven from asyncio; wraps (and exposes as `.sync`) a `Sandbox`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sync = sandbox

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self.name} on {self.backend} ({self.id[:12]})>"

    # What the launch already knows: plain attributes, no engine call.
    @property
    def id(self) -> str:
        return self.sync.id

    @property
    def name(self) -> str:
        return self.sync.name

    @property
    def backend(self) -> str:
        return self.sync.backend

    @property
    def spec(self) -> SandboxSpec:
        return self.sync.spec

    @property
    def labels(self) -> Mapping[str, str]:
        return self.sync.labels

    @property
    def ports(self) -> dict[int, tuple[str, int]]:
        return self.sync.ports

    def port(self, guest_port: int, protocol: str = "tcp") -> tuple[str, int]:
        return self.sync.port(guest_port, protocol)

    @property
    def enforcement(self) -> Mapping[str, ControlStatus]:
        return self.sync.enforcement

    # What asks the engine: awaited.
    async def state(self) -> SandboxState:
        return await _run(lambda: self.sync.state)

    async def exec(
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
        """Run a command to its end (see `Sandbox.exec`); `stdout`/`stderr` are written to
        (or called) from a worker thread, not the event loop."""
        return await _run(
            self.sync.exec,
            command,
            timeout=timeout,
            env=env,
            workdir=workdir,
            user=user,
            stdin=stdin,
            raise_on_timeout=raise_on_timeout,
            stdout=stdout,
            stderr=stderr,
            max_output=max_output,
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
    ) -> AsyncExecStream:
        """Stream a command's output (see `Sandbox.exec_stream`); the command starts when
        iteration begins. Arguments are checked here, at once."""
        return AsyncExecStream(
            self.sync.exec_stream(
                command, timeout=timeout, env=env, workdir=workdir, user=user, stdin=stdin
            )
        )

    async def spawn(
        self,
        command: Sequence[str] | str,
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> AsyncProcess:
        """Start a command beside the loop (see `Sandbox.spawn`)."""
        future = _submit(
            self.sync.spawn,
            command,
            env=env,
            workdir=workdir,
            user=user,
            timeout=timeout,
            max_output=max_output,
        )
        return AsyncProcess(await _started(future))

    async def pty(
        self,
        command: Sequence[str] | str = ("/bin/sh",),
        *,
        size: tuple[int, int] = (24, 80),
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> AsyncPty:
        """Start a command on a terminal (see `Sandbox.pty`)."""
        future = _submit(
            self.sync.pty, command, size=size, env=env, workdir=workdir, user=user, timeout=timeout
        )
        return AsyncPty(await _started(future))

    async def write_file(
        self,
        path: str,
        data: bytes | str,
        mode: int = 0o644,
        *,
        parents: bool = False,
        timeout: float = FILE_TIMEOUT,
    ) -> None:
        await _run(self.sync.write_file, path, data, mode, parents=parents, timeout=timeout)

    @overload
    async def listdir(
        self,
        path: str,
        *,
        detail: Literal[False] = False,
        max_entries: int | None = None,
        timeout: float = FILE_TIMEOUT,
    ) -> list[str]: ...
    @overload
    async def listdir(
        self,
        path: str,
        *,
        detail: Literal[True],
        max_entries: int | None = None,
        timeout: float = FILE_TIMEOUT,
    ) -> list[DirEntry]: ...
    async def listdir(
        self,
        path: str,
        *,
        detail: bool = False,
        max_entries: int | None = None,
        timeout: float = FILE_TIMEOUT,
    ) -> list[str] | list[DirEntry]:
        return await _run(
            self.sync.listdir, path, detail=detail, max_entries=max_entries, timeout=timeout
        )

    async def stat(
        self, path: str, *, follow_symlinks: bool = False, timeout: float = FILE_TIMEOUT
    ) -> FileStat:
        return await _run(self.sync.stat, path, follow_symlinks=follow_symlinks, timeout=timeout)

    async def exists(
        self, path: str, *, follow_symlinks: bool = False, timeout: float = FILE_TIMEOUT
    ) -> bool:
        return await _run(self.sync.exists, path, follow_symlinks=follow_symlinks, timeout=timeout)

    async def remove(
        self, path: str, *, recursive: bool = False, timeout: float = FILE_TIMEOUT
    ) -> None:
        await _run(self.sync.remove, path, recursive=recursive, timeout=timeout)

    async def mkdir(
        self,
        path: str,
        *,
        parents: bool = False,
        exist_ok: bool = False,
        mode: int = 0o755,
        timeout: float = FILE_TIMEOUT,
    ) -> None:
        await _run(
            self.sync.mkdir, path, parents=parents, exist_ok=exist_ok, mode=mode, timeout=timeout
        )

    async def read_file(
        self,
        path: str,
        *,
        into: BinaryWriter | str | os.PathLike[str] | None = None,
        max_size: int | None = None,
        timeout: float = FILE_TIMEOUT,
    ) -> bytes:
        """See `Sandbox.read_file`; a file object `into` is written from a worker thread."""
        return await _run(self.sync.read_file, path, into=into, max_size=max_size, timeout=timeout)

    async def copy_in(
        self,
        host_path: str | os.PathLike[str],
        sandbox_path: str,
        *,
        timeout: float = FILE_TIMEOUT,
    ) -> None:
        await _run(self.sync.copy_in, host_path, sandbox_path, timeout=timeout)

    async def copy_out(
        self,
        sandbox_path: str,
        host_path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        timeout: float = FILE_TIMEOUT,
        max_size: int | None = None,
        max_members: int | None = None,
    ) -> None:
        await _run(
            self.sync.copy_out,
            sandbox_path,
            host_path,
            overwrite=overwrite,
            timeout=timeout,
            max_size=max_size,
            max_members=max_members,
        )

    async def wait_for_port(
        self,
        guest_port: int,
        protocol: str = "tcp",
        *,
        timeout: float = 60.0,
        interval: float = 0.2,
    ) -> None:
        await _run(
            self.sync.wait_for_port,
            guest_port,
            protocol,
            timeout=timeout,
            interval=interval,
        )

    async def wait_for_log(
        self, pattern: str | re.Pattern[str], *, timeout: float = 60.0, interval: float = 0.2
    ) -> str:
        return await _run(self.sync.wait_for_log, pattern, timeout=timeout, interval=interval)

    async def wait_for(
        self,
        command: Sequence[str] | str,
        *,
        timeout: float = 60.0,
        interval: float = 0.5,
        user: str | None = None,
    ) -> ExecResult:
        return await _run(
            self.sync.wait_for, command, timeout=timeout, interval=interval, user=user
        )

    async def logs(self) -> str:
        return await _run(self.sync.logs)

    async def stop(self, timeout: float = 10.0) -> None:
        await _run(self.sync.stop, timeout)

    async def start(self) -> None:
        await _run(self.sync.start)

    async def destroy(self) -> None:
        """Remove the sandbox; idempotent. Not cancellable: once asked, removal finishes."""
        await asyncio.shield(_run(self.sync.destroy))

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.destroy()
        except Exception:
            if exc is None:
                raise
            logger.exception("destroying %s after an error failed", self.name)


def _destroy_quietly(sandbox: Sandbox) -> None:
    try:
        sandbox.destroy()
    except Exception:
        logger.exception("could not destroy %s after a cancelled launch", sandbox.name)


def _destroy_if_launched(future: concurrent.futures.Future[Sandbox]) -> None:
    """Done-callback for a launch whose awaiter was cancelled: nobody will own it."""
    if not future.cancelled() and future.exception() is None:
        # Off the caller's thread: this may run on the loop when the launch just finished.
        _pool().submit(_destroy_quietly, future.result())


class _Launch:
    """What `launch()` returns: await it for a sandbox, or `async with` it."""

    def __init__(self, spec: SandboxSpec) -> None:
        self._spec = spec
        self._sandbox: AsyncSandbox | None = None

    def __await__(self) -> Generator[Any, None, AsyncSandbox]:
        return self._start().__await__()

    async def _start(self) -> AsyncSandbox:
        future = _submit(_launch_sync, self._spec)
        try:
            return AsyncSandbox(await asyncio.wrap_future(future))
        except asyncio.CancelledError:
            # The launch may already be running in its thread: destroy whatever it makes.
            future.add_done_callback(_destroy_if_launched)
            raise

    async def __aenter__(self) -> AsyncSandbox:
        self._sandbox = await self._start()
        return self._sandbox

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(exc_type, exc, tb)


def launch(spec: SandboxSpec | None = None, /, **fields: Any) -> _Launch:
    """Start a sandbox without blocking the loop: `sb = await launch(...)` (then
    `await sb.destroy()`) or `async with launch(...) as sb`. The spec is validated here,
    before anything is awaited."""
    if spec is None:
        spec = SandboxSpec(**fields)
    elif fields:
        spec = attrs.evolve(spec, **fields)
    return _Launch(spec)
