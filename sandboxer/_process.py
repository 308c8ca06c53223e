"""`Sandbox.spawn`: a command that runs beside the caller, its stdin open, its output
read as it arrives.

One thread per process reads the engine's stream (`ProcessChannel.output`) and keeps
what it brings; the caller's threads read, write, signal and wait meanwhile. A terminal
(`sandboxer._pty`) shares all but how output is kept.
"""

from __future__ import annotations

import abc
import array
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

from ._backend import ExitStatus, ProcessChannel
from ._errors import ExecTimeout, InvalidSpec, OutputTooLarge
from ._log import logger
from ._models import ExecResult

# A command killed by sandboxer (a timeout, a cap) is reported as killed by SIGKILL,
# whatever the engine says.
TIMEOUT_EXIT_CODE = -signal.SIGKILL
# Runs of output (see Process) kept at least, whatever the cap: 8 KiB of bookkeeping.
_MIN_RUNS = 1024
# How long close() waits for the output to end once the command was killed.
_CLOSE_WAIT = 30.0


def wait_timeout(value: object) -> float | None:
    """A timeout a caller waits for (None: no limit; 0: just look)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpec("timeout", f"expected a number of seconds or None, got {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise InvalidSpec("timeout", f"must be zero or more and finite, got {value!r}")
    return float(value)


def signal_number(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in signal.valid_signals():
        raise InvalidSpec("signum", f"expected a signal number (signal.SIGTERM...), got {value!r}")
    return int(value)


def stdin_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise InvalidSpec("data", f"expected bytes or str, got {type(value).__name__}")


class Running(abc.ABC):
    """What a spawned process and a terminal share: the thread that reads the engine's
    output, the exit status, stdin and signals. Subclasses keep the output (`_take`)."""

    def __init__(self, channel: ProcessChannel, argv: tuple[str, ...]) -> None:
        self.argv = argv
        self._channel = channel
        self._changed = threading.Condition()
        self._watchers: list[Callable[[], None]] = []
        self._status: ExitStatus | None = None
        self._error: Exception | None = None
        self._ended = False
        self._stdin_closed = False
        self._started = time.monotonic()
        self._duration = 0.0
        self._thread = threading.Thread(
            target=self._pump, name=f"sandboxer-process-{argv[0][-40:]}", daemon=True
        )

    def _start(self) -> None:
        """Start reading; subclasses call it once their own state is set."""
        self._thread.start()

    @abc.abstractmethod
    def _take(self, stream: str, chunk: bytes) -> bool:
        """Keep one chunk (called with `_changed` held); False stops and kills the command."""

    def _pump(self) -> None:
        output = self._channel.output
        status: ExitStatus | None = None
        error: Exception | None = None
        try:
            while True:
                try:
                    stream, chunk = next(output)
                except StopIteration as stop:
                    status = stop.value
                    break
                with self._changed:
                    keep_going = self._take(stream, chunk)
                self._notify()
                if not keep_going:
                    break
        except Exception as exc:  # an engine failure: whoever waits gets it
            error = exc
        finally:
            try:
                output.close()  # before its end (a cap): kills the command and its tree
            except Exception as exc:
                error = error or exc
            with self._changed:
                self._status, self._error, self._ended = status, error, True
                self._duration = time.monotonic() - self._started
            self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher()

    def watch(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the reading thread) whenever output or the status changes."""
        with self._changed:
            self._watchers.append(callback)

    @property
    def pid(self) -> int | None:
        """The command's pid as the sandbox sees it (None if the engine does not tell)."""
        return self._channel.pid

    @property
    def running(self) -> bool:
        return not self._ended

    @property
    def exit_code(self) -> int | None:
        """None while it runs (or if reading its output failed: `wait` raises why)."""
        with self._changed:
            if not self._ended or (self._status is None and self._error is not None):
                return None
            if self._status is None or self._status.timed_out:
                return TIMEOUT_EXIT_CODE  # killed at a cap or at its timeout
            return self._status.exit_code

    @property
    def timed_out(self) -> bool:
        """Whether its `timeout` passed and it was killed."""
        return self._status is not None and self._status.timed_out

    def write(self, data: bytes | str) -> None:
        """Send `data` to its stdin (str as UTF-8); blocks while the command does not read.
        After the command ended it does nothing."""
        payload = stdin_bytes(data)
        if self._stdin_closed:
            raise InvalidSpec("data", "stdin was closed with close_stdin()")
        if payload and not self._ended:
            self._channel.write(payload)

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Send `signum` to the command; SIGKILL (the default) kills it and everything it
        started. Does nothing once it ended."""
        number = signal_number(signum)
        if not self._ended:
            self._channel.signal(number)

    def _ended_within(self, timeout: object) -> None:
        """Return once the command ended; ExecTimeout (it keeps running) if not within
        `timeout`; the engine's error if reading its output failed."""
        seconds = wait_timeout(timeout)
        with self._changed:
            if not self._changed.wait_for(lambda: self._ended, seconds):
                raise self._still_running(seconds or 0.0)
        if self._error is not None:
            raise self._error

    def _still_running(self, timeout: float) -> ExecTimeout:
        return ExecTimeout(self.argv, timeout, b"", b"", killed=False)

    def close(self) -> None:
        """Kill the command if it still runs, and wait (a while) for its output to end."""
        if not self._ended:
            self._channel.signal(signal.SIGKILL)
        self._thread.join(_CLOSE_WAIT)
        if self._thread.is_alive():
            logger.warning("the output of %r did not end after a kill", self.argv[0])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Process(Running):
    """A command started by `Sandbox.spawn`, running beside the caller.

    Input: `write(bytes | str)`, then `close_stdin()` for EOF.
    Output, as it arrives: `read(timeout)` gives the next chunk not read yet as
    ("stdout" | "stderr", bytes) (what came of one stream since the last read, joined);
    None if nothing came within `timeout`; ("", b"") once the output ended (empty data
    means EOF, as for `Pty.read`). `for stream, chunk in proc` reads the same chunks to
    the end. Everything received stays in `stdout` and `stderr` too (reading does not
    consume it), at most `max_output` bytes for both, and their order at most
    `max_output // 8` switches between the two: past either cap the command is killed
    and `wait` raises OutputTooLarge with the partial result.
    End: `wait(timeout)` returns the ExecResult; past `timeout` it raises ExecTimeout
    and leaves the command running. `exit_code` is None while it runs. The spawn's own
    `timeout` kills the command and all it started (`timed_out` set), as for exec.
    `kill(signum)` signals it (SIGKILL, the default, reaches all it started). Leaving a
    `with` block (or `close()`) kills it if it still runs.
    """

    def __init__(self, channel: ProcessChannel, argv: tuple[str, ...], max_output: int) -> None:
        super().__init__(channel, argv)
        self._limit = max_output
        self._room = max_output
        # Output is kept per stream, and its order as runs (a run: chunks of one stream
        # in a row, stdout > 0, stderr < 0, not handed out yet when joined): a sandbox
        # writing a byte at a time costs a byte each, not an object per byte.
        self._kept = {"stdout": bytearray(), "stderr": bytearray()}
        self._runs = array.array("q")
        self._max_runs = max(_MIN_RUNS, max_output // self._runs.itemsize)
        self._next = 0  # the first run `read` has not handed out
        self._handed = {"stdout": 0, "stderr": 0}  # bytes of each that `read` handed out
        self.truncated = False
        self._start()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exit code {self.exit_code}"
        return f"<Process {self.argv[0]!r} pid {self.pid} {state}>"

    def _take(self, stream: str, chunk: bytes) -> bool:
        kept = chunk[: self._room]
        if kept:
            size = -len(kept) if stream == "stderr" else len(kept)
            last = self._runs[-1] if len(self._runs) > self._next else 0
            if last and (last > 0) == (size > 0):
                self._runs[-1] += size
            elif len(self._runs) < self._max_runs:
                self._runs.append(size)
            else:  # as many switches of stream as the cap allows runs: past them, a cap
                kept = b""
            self._kept["stderr" if size < 0 else "stdout"] += kept
            self._room -= len(kept)
        self.truncated = len(kept) < len(chunk)
        return not self.truncated

    def close_stdin(self) -> None:
        """End of input: the command reads EOF. Later writes are refused."""
        self._stdin_closed = True
        if not self._ended:
            self._channel.close_stdin()

    def read(self, timeout: float | None = None) -> tuple[str, bytes] | None:
        """The next chunk not read yet; None if none came within `timeout` seconds
        (None: wait as long as it takes); ("", b"") once the output ended."""
        seconds = wait_timeout(timeout)
        with self._changed:
            if not self._changed.wait_for(self._readable, seconds):
                return None
            if self._next == len(self._runs):
                return "", b""
            size = self._runs[self._next]
            self._next += 1
            stream = "stderr" if size < 0 else "stdout"
            start = self._handed[stream]
            self._handed[stream] += abs(size)
            return stream, bytes(self._kept[stream][start : start + abs(size)])

    def _readable(self) -> bool:
        return self._next < len(self._runs) or self._ended

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        while (chunk := self.read()) is not None and chunk[1]:
            yield chunk

    def _output(self, stream: str) -> bytes:
        with self._changed:
            return bytes(self._kept[stream])

    @property
    def stdout(self) -> bytes:
        """All of stdout received so far (within `max_output`)."""
        return self._output("stdout")

    @property
    def stderr(self) -> bytes:
        return self._output("stderr")

    def wait(self, timeout: float | None = None) -> ExecResult:
        """The result once the command ended; ExecTimeout if it did not within `timeout`
        seconds (it is not killed); OutputTooLarge if it passed `max_output`."""
        self._ended_within(timeout)
        result = ExecResult(
            exit_code=self.exit_code if self.exit_code is not None else TIMEOUT_EXIT_CODE,
            stdout=self.stdout,
            stderr=self.stderr,
            timed_out=self.timed_out,
            duration=self._duration,
            truncated=self.truncated,
        )
        if self.truncated:
            raise OutputTooLarge(
                f"the output of {self.argv[0]!r}",
                self._limit,
                "pass spawn(max_output=...) a bigger cap",
                result,
            )
        return result

    def _still_running(self, timeout: float) -> ExecTimeout:
        return ExecTimeout(self.argv, timeout, self.stdout, self.stderr, killed=False)

    def __enter__(self) -> Process:
        return self
