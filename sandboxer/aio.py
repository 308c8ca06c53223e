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
`timeout`): its thread is busy until the command ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import attrs

from ._backend import ControlStatus, SandboxState
from ._launch import launch as _launch_sync
from ._log import logger
from ._models import ExecResult, SandboxSpec
from ._output import DEFAULT_MAX_OUTPUT, BinaryWriter, Writer
from ._sandbox import FILE_TIMEOUT, ExecStream, Sandbox

__all__ = ["AsyncExecStream", "AsyncSandbox", "launch", "max_threads", "set_max_threads"]

T = TypeVar("T")
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

    async def write_file(
        self, path: str, data: bytes | str, mode: int = 0o644, *, timeout: float = FILE_TIMEOUT
    ) -> None:
        await _run(self.sync.write_file, path, data, mode, timeout=timeout)

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

    async def logs(self) -> str:
        return await _run(self.sync.logs)

    async def stop(self, timeout: float = 10.0) -> None:
        await _run(self.sync.stop, timeout)

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
