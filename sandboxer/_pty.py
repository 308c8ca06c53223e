"""`Sandbox.pty`: a command on a pseudo-terminal inside the sandbox, typed into and read
like a terminal window (a shell by default)."""

from __future__ import annotations

from ._backend import ProcessChannel, TerminalSize
from ._errors import InvalidSpec
from ._process import Running, wait_timeout

# Unread terminal output kept at most; past it the oldest goes, as a terminal's
# scrollback would (a command is never stalled by a reader that fell behind).
PTY_KEPT = 1 << 20
# TIOCSWINSZ takes unsigned shorts.
_MAX_SIDE = 0xFFFF


def _side(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SIDE:
        raise InvalidSpec(field, f"expected a count of character cells (1-65535), got {value!r}")
    return value


def terminal_size(value: object) -> TerminalSize:
    """A caller's `size=(rows, cols)`."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise InvalidSpec("size", f"expected (rows, cols), got {value!r}")
    return TerminalSize(_side("size", value[0]), _side("size", value[1]))


class Pty(Running):
    """A command on a terminal, started by `Sandbox.pty`.

    `write(bytes | str)` types into it (the terminal echoes, as any terminal does);
    `read(timeout, max_bytes)` returns what it printed since the last read (stdout and
    stderr together, as a terminal shows them): b"" once it ended and all was read, None
    if nothing came within `timeout`. Unread output beyond 1 MiB is dropped oldest first.
    `resize(rows, cols)` changes the window (the command gets SIGWINCH). `wait(timeout)`
    returns the exit code; past `timeout` it raises ExecTimeout and leaves it running.
    `exit_code` is None while it runs. `kill(signum)` signals it (SIGKILL, the default,
    reaches all it started); `close()` or leaving a `with` block kills it if it runs.
    """

    def __init__(self, channel: ProcessChannel, argv: tuple[str, ...]) -> None:
        super().__init__(channel, argv)
        self._unread = bytearray()
        self._start()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exit code {self.exit_code}"
        return f"<Pty {self.argv[0]!r} pid {self.pid} {state}>"

    def _take(self, stream: str, chunk: bytes) -> bool:
        self._unread += chunk
        if len(self._unread) > PTY_KEPT:
            del self._unread[:-PTY_KEPT]
        return True

    def _readable(self) -> bool:
        return bool(self._unread) or self._ended

    def read(self, timeout: float | None = None, max_bytes: int = 65536) -> bytes | None:
        """Up to `max_bytes` of output not read yet, as soon as there is some; None if
        none came within `timeout` seconds (None: wait as long as it takes); b"" once the
        command ended and everything was read."""
        seconds = wait_timeout(timeout)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise InvalidSpec("max_bytes", f"expected a positive number, got {max_bytes!r}")
        with self._changed:
            if not self._changed.wait_for(self._readable, seconds):
                return None
            data = bytes(self._unread[:max_bytes])
            del self._unread[:max_bytes]
            return data

    def resize(self, rows: int, cols: int) -> None:
        """Set the terminal's size in character cells."""
        size = TerminalSize(_side("rows", rows), _side("cols", cols))
        if not self._ended:
            self._channel.resize(size)

    def wait(self, timeout: float | None = None) -> int:
        """The exit code once the command ended; ExecTimeout if it did not within
        `timeout` seconds (it is not killed)."""
        self._ended_within(timeout)
        code = self.exit_code
        assert code is not None  # ended, and reading did not fail
        return code

    def __enter__(self) -> Pty:
        return self
