"""A terminal session with a command in a sandbox (`run -it`, `exec -it`, `shell`).

Our terminal goes into raw mode, so every key (Ctrl-C, Ctrl-Z, arrows) reaches the
command as bytes and the sandbox's terminal does the echoing and line editing. Window
size changes follow (SIGWINCH). Whatever ends the session (the command exiting, the
sandbox dying, an error, SIGTERM or SIGHUP), our terminal's settings come back.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType
from typing import Protocol

from sandboxer import InvalidSpec, Sandbox

from . import _output

# What `shell` (and `run -it` without a command) runs.
SHELL = "/bin/sh"
# What the sandbox's terminal is given when ours has no size (output not a terminal).
DEFAULT_SIZE = (24, 80)
_READ = 65536
# How often the output thread looks whether the session is over (it blocks on reads).
_POLL_SECONDS = 0.2


class Terminal(Protocol):
    """What a session needs of `sandboxer.Pty`."""

    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float | None = None, max_bytes: int = _READ) -> bytes | None: ...

    def resize(self, rows: int, cols: int) -> None: ...


def require_terminal(interactive: bool) -> None:
    """`-it` types into the sandbox from our terminal: refuse piped input, as Docker does."""
    if interactive and not sys.stdin.isatty():
        raise InvalidSpec(
            "-t", "the input device is not a TTY (drop -t to pass piped input with -i)"
        )


def window_size(*fds: int) -> tuple[int, int]:
    """(rows, cols) of the first of `fds` that is a terminal with a size."""
    for fd in fds:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            if size.lines and size.columns:
                return size.lines, size.columns
    return DEFAULT_SIZE


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """`fd`'s terminal in raw mode for the block; its settings restored however it ends."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        # TCSADRAIN: what the command printed last is shown under the settings it expects.
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _hang_up(signum: int, frame: FrameType | None) -> None:
    # Unwind (restoring the terminal, removing what we launched), as SIGTERM does.
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _signals(wake: int, resized: threading.Event) -> Iterator[None]:
    """SIGWINCH has the session pass the new size on; SIGHUP ends it cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread (tests call from others)
        return

    def on_resize(signum: int, frame: FrameType | None) -> None:
        resized.set()

    previous = {
        signal.SIGWINCH: signal.signal(signal.SIGWINCH, on_resize),
        signal.SIGHUP: signal.signal(signal.SIGHUP, _hang_up),
    }
    # A signal may land on any thread (the output's, the engine's): the wakeup byte gets
    # the session's select to return, so that the handlers run, whichever it was.
    previous_wake = signal.set_wakeup_fd(wake)
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_wake)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _given(fd: int | None) -> tuple[int, ...]:
    return () if fd is None else (fd,)


def _write_all(fd: int, data: bytes) -> None:
    with memoryview(data) as view:
        while view:
            view = view[os.write(fd, view) :]


class _Output(threading.Thread):
    """Copies the command's output to our terminal until it ends, then wakes the session."""

    def __init__(self, terminal: Terminal, fd: int, wake: int) -> None:
        super().__init__(name="sandboxer-terminal-output", daemon=True)
        self._terminal, self._fd, self._wake = terminal, fd, wake
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                data = self._terminal.read(timeout=_POLL_SECONDS)
                if data == b"":
                    break
                if data:
                    _write_all(self._fd, data)
        except BaseException as exc:  # shown by the session, after our terminal is back
            self.failure = exc
        finally:
            self.stop.set()
            with contextlib.suppress(OSError):
                os.write(self._wake, b"o")


def session(terminal: Terminal, *, stdin: int | None, stdout: int) -> None:
    """Pass our terminal through to `terminal` until its command's output ends: output
    out, window size changes along, and keys in, from `stdin` (in raw mode) if given."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)  # a signal's wakeup byte never blocks on a full pipe
    resized = threading.Event()
    output = _Output(terminal, stdout, wake_write)
    try:
        with (
            raw_mode(stdin) if stdin is not None else contextlib.nullcontext(),
            _signals(wake_write, resized),
            selectors.DefaultSelector() as selector,
        ):
            selector.register(wake_read, selectors.EVENT_READ)
            if stdin is not None:
                selector.register(stdin, selectors.EVENT_READ)
            output.start()
            while not output.stop.is_set():
                for key, _ in selector.select():
                    if key.fd == wake_read:
                        os.read(wake_read, _READ)
                        continue
                    data = os.read(key.fd, _READ)
                    if data:
                        terminal.write(data)
                    else:  # our input ended (a terminal in raw mode never does)
                        selector.unregister(key.fd)
                if resized.is_set():
                    resized.clear()
                    terminal.resize(*window_size(stdout, *_given(stdin)))
    finally:
        output.stop.set()
        if output.ident is not None:  # started
            output.join()
        os.close(wake_read)
        os.close(wake_write)
    if output.failure is not None:
        raise output.failure


def run(
    sandbox: Sandbox,
    argv: Sequence[str],
    *,
    interactive: bool,
    timeout: float | None,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
) -> int:
    """`argv` on a terminal in `sandbox`, ours passed through; its exit code (negative:
    killed by that signal)."""
    stdin = sys.stdin.fileno() if interactive else None
    stdout = sys.stdout.fileno()
    sys.stdout.flush()
    size = window_size(stdout, *_given(stdin))
    with sandbox.pty(
        list(argv), size=size, env=env, workdir=workdir, user=user, timeout=timeout
    ) as terminal:
        session(terminal, stdin=stdin, stdout=stdout)
        code = terminal.wait()
        if terminal.timed_out:
            _output.note(f"the command ran past --timeout {timeout:g}s and was killed")
    return code
