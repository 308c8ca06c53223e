"""`Pool`: sandboxes of one spec started ahead of time, handed out once, refilled behind.

A sandbox from the pool is never reused: it is destroyed when its `acquire()` block ends
(isolation first), and a fresh one is launched in the background to take its place. Only
the public `launch`/`destroy` API is used, so a pool works on every backend.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import attrs

from ._errors import ImageNotFound, InvalidSpec, SandboxError, UnsupportedFeature
from ._launch import launch
from ._log import logger
from ._models import SandboxSpec
from ._sandbox import Sandbox
from ._selector import select

# Refill failures are retried after these delays (seconds), then every _MAX_BACKOFF.
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
# Failures that no retry can fix: acquire() raises them instead of waiting.
_PERMANENT = (InvalidSpec, ImageNotFound, UnsupportedFeature)


class _Workers:
    """A few daemon threads running tasks in order. Daemon, because Python joins other
    threads before atexit handlers run: a refill retrying against a broken engine would
    hold up exit forever. `_close_pools_at_exit` closes every pool cleanly instead."""

    def __init__(self, count: int) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._run, name=f"sandboxer-pool-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        """Queue `task`; once shut down, run it here instead."""
        if self._stopped:
            task()
        else:
            self._tasks.put(task)

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except Exception:  # a task logs its own failures; this keeps the thread alive
                logger.exception("pool task failed")

    def shutdown(self) -> None:
        """Run what is queued, then stop the threads and wait for them."""
        self._stopped = True
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()


class PoolTimeout(SandboxError, TimeoutError):
    """No sandbox became ready within acquire()'s timeout."""


class PoolClosed(SandboxError):
    """The pool was closed: it hands out nothing more."""


class Pool:
    """Keep `size` sandboxes of one spec started and ready for `acquire()`.

        with sandboxer.Pool(image="sandboxer/minimal", size=4) as pool:
            with pool.acquire() as sb:
                sb.exec(["echo", "hi"])

    The spec is selected (and so validated) when the pool is made. Refills run in a small
    thread pool (`workers`, default min(size, 4)); a failed refill is logged and retried
    with backoff. `close()` (or leaving the pool's block) destroys every sandbox the pool
    launched, including those still handed out.
    """

    def __init__(
        self,
        spec: SandboxSpec | None = None,
        /,
        *,
        size: int = 2,
        workers: int | None = None,
        **fields: Any,
    ) -> None:
        if spec is None:
            spec = SandboxSpec(**fields)
        elif fields:
            spec = attrs.evolve(spec, **fields)
        if not isinstance(size, int) or size < 1:
            raise InvalidSpec("size", f"must be a positive integer, got {size!r}")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise InvalidSpec("workers", f"must be a positive integer, got {workers!r}")
        if spec.name is not None:
            raise InvalidSpec("name", "a pool launches many sandboxes: leave the name unset")
        # Pin the backend now: every pooled sandbox comes from the same engine, and a spec
        # no backend can run fails here rather than in a background thread.
        self.spec = attrs.evolve(spec, backend=select(spec).backend)
        self.size = size
        self._cond = threading.Condition()
        self._ready: collections.deque[Sandbox] = collections.deque()
        self._leased: set[Sandbox] = set()
        self._closed = False
        self._closing = threading.Event()  # wakes refills sleeping in a backoff
        self._error: BaseException | None = None  # the last refill failure, until a success
        self._workers = _Workers(workers or min(size, 4))
        _open_pools.add(self)
        for _ in range(size):
            self._workers.submit(self._refill)

    def __repr__(self) -> str:
        return f"<Pool {self.spec.image} on {self.spec.backend}: {self.ready}/{self.size} ready>"

    @property
    def ready(self) -> int:
        """How many sandboxes are started and waiting to be handed out."""
        with self._cond:
            return len(self._ready)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until `size` sandboxes are ready; False if `timeout` passed first."""
        with self._cond:
            return (
                self._cond.wait_for(lambda: self._closed or len(self._ready) >= self.size, timeout)
                and not self._closed
            )

    @contextlib.contextmanager
    def acquire(self, timeout: float | None = None) -> Iterator[Sandbox]:
        """Hand out a ready sandbox for the block; it is destroyed when the block ends.

        Waits up to `timeout` seconds (None: as long as it takes) for one to be ready.
        """
        sandbox = self._take(timeout)
        self._workers.submit(self._refill)
        try:
            yield sandbox
        finally:
            with self._cond:
                self._leased.discard(sandbox)
            self._workers.submit(functools.partial(self._discard, sandbox))

    def _take(self, timeout: float | None) -> Sandbox:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._ready:
                if self._closed:
                    raise PoolClosed("the pool is closed")
                if isinstance(self._error, _PERMANENT):
                    raise self._error
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PoolTimeout(
                        f"no sandbox ready within {timeout}s"
                        + (f"; last refill failure: {self._error}" if self._error else "")
                    ) from self._error
                self._cond.wait(left)
            sandbox = self._ready.popleft()
            self._leased.add(sandbox)
            return sandbox

    def _refill(self) -> None:
        """Launch one sandbox into the pool, retrying with backoff until it works or closes."""
        delay = _FIRST_BACKOFF
        while not self._closing.is_set():
            try:
                sandbox = launch(self.spec)
            except Exception as exc:
                logger.warning("pool refill failed (retrying in %.1fs): %s", delay, exc)
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                if self._closing.wait(delay):
                    return
                delay = min(delay * 2, _MAX_BACKOFF)
                continue
            with self._cond:
                if not self._closed:
                    self._ready.append(sandbox)
                    self._error = None
                    self._cond.notify_all()
                    return
            self._discard(sandbox)  # closed while it was starting
            return

    def _discard(self, sandbox: Sandbox) -> None:
        try:
            sandbox.destroy()
        except Exception:
            # It stays in launch's registry, which retries at interpreter exit.
            logger.exception("pool could not destroy %s", sandbox.name)

    def close(self) -> None:
        """Destroy every sandbox of the pool (ready, starting or handed out). Idempotent."""
        with self._cond:
            self._closed = True
            self._closing.set()
            self._cond.notify_all()
            doomed = [*self._ready, *self._leased]
            self._ready.clear()
            self._leased.clear()
        for sandbox in doomed:
            self._workers.submit(functools.partial(self._discard, sandbox))
        # Waits for those, and for refills still starting (they see _closed and destroy what
        # they made); queued refills see _closing and return at once.
        self._workers.shutdown()
        _open_pools.discard(self)

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_open_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


# Registered after launch's own exit hook, so it runs before it: pools stop refilling and
# destroy what they hold; launch's hook then catches anything left.
@atexit.register
def _close_pools_at_exit() -> None:
    for pool in list(_open_pools):
        try:
            pool.close()
        except Exception:
            logger.exception("closing %r at exit failed", pool)
