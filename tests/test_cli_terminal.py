"""The CLI's terminal sessions (`run -it`, `exec -it`, `shell`): raw mode and its undoing,
keys, output and window sizes passed through, over a pseudo-terminal pair standing in for
the user's terminal."""

from __future__ import annotations

import fcntl
import io
import os
import queue
import select
import signal
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sandboxer import EngineError
from sandboxer.cli import _terminal, build_parser, main
from sandboxer.cli._run_argv import canonical_argv, command_words
from sandboxer.testing import FakeBackend

# A deadline for what the helper thread waits for, never a measure of speed.
_DEADLINE = 30.0


# Every command sees the fake backend alone (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("only_fake_engines")


@pytest.fixture
def user_terminal() -> Iterator[tuple[int, int]]:
    """(the terminal's side the CLI uses, the side a user types into)."""
    main_side, user_side = os.openpty()
    set_size(main_side, 24, 80)
    yield user_side, main_side
    os.close(main_side)
    os.close(user_side)


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def local_flags(fd: int) -> int:
    return int(termios.tcgetattr(fd)[3])


class FakeTerminal:
    """A command on a terminal: echoes what is typed in capitals (so that it tells from
    our terminal's own echo before raw mode), records sizes, ends on b"exit"."""

    def __init__(self) -> None:
        self.typed = b""
        self.sizes: list[tuple[int, int]] = []
        self._output: queue.Queue[bytes] = queue.Queue()
        self.failure: Exception | None = None

    def write(self, data: bytes) -> None:
        self.typed += data
        self._output.put(data.upper())
        if b"exit" in self.typed:
            self._output.put(b"")

    def read(self, timeout: float | None = None, max_bytes: int = 65536) -> bytes | None:
        if self.failure is not None:
            raise self.failure
        try:
            return self._output.get(timeout=timeout)
        except queue.Empty:
            return None

    def resize(self, rows: int, cols: int) -> None:
        self.sizes.append((rows, cols))
        self._output.put(f"size {rows} {cols}".encode())


def in_background(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def read_until(fd: int, wanted: bytes) -> bytes:
    """What the user's side shows, once `wanted` appeared on it."""
    seen = b""
    deadline = time.monotonic() + _DEADLINE
    while wanted not in seen:
        assert time.monotonic() < deadline, f"{wanted!r} not seen, only {seen!r}"
        if select.select([fd], [], [], 0.1)[0]:
            seen += os.read(fd, 4096)
    return seen


def type_when_raw(fd: int, user: int, keys: bytes) -> None:
    """Type `keys` once the session put the terminal in raw mode (typed before, a
    cooked terminal would edit them as a line)."""
    deadline = time.monotonic() + _DEADLINE
    while local_flags(fd) & termios.ICANON:
        assert time.monotonic() < deadline, "the terminal never went raw"
        time.sleep(0.01)
    os.write(user, keys)


# raw mode -----------------------------------------------------------------------------
def test_raw_mode_is_undone_however_the_block_ends(user_terminal: tuple[int, int]) -> None:
    fd, _ = user_terminal
    before = termios.tcgetattr(fd)
    with pytest.raises(RuntimeError), _terminal.raw_mode(fd):
        assert not local_flags(fd) & (termios.ICANON | termios.ECHO | termios.ISIG)
        raise RuntimeError("the sandbox died")
    assert termios.tcgetattr(fd) == before


# sessions -----------------------------------------------------------------------------
def test_keys_go_in_as_bytes_and_output_comes_out(user_terminal: tuple[int, int]) -> None:
    fd, user = user_terminal
    before = termios.tcgetattr(fd)
    terminal = FakeTerminal()

    def user_types() -> None:
        type_when_raw(fd, user, b"ab\x03")  # Ctrl-C: a byte in raw mode, not our SIGINT
        read_until(user, b"AB\x03")
        os.write(user, b"exit\r")

    typing = in_background(user_types)
    _terminal.session(terminal, stdin=fd, stdout=fd)
    typing.join(_DEADLINE)
    assert terminal.typed == b"ab\x03exit\r"
    assert termios.tcgetattr(fd) == before


def test_window_size_changes_follow(user_terminal: tuple[int, int]) -> None:
    fd, user = user_terminal
    terminal = FakeTerminal()

    def user_resizes() -> None:
        type_when_raw(fd, user, b"x")
        read_until(user, b"X")  # the session runs, its handler is in place
        set_size(user, 30, 100)
        os.kill(os.getpid(), signal.SIGWINCH)
        read_until(user, b"size 30 100")
        os.write(user, b"exit")

    resizing = in_background(user_resizes)
    _terminal.session(terminal, stdin=fd, stdout=fd)
    resizing.join(_DEADLINE)
    assert terminal.sizes == [(30, 100)]


def test_hangup_ends_the_session_with_the_terminal_restored(
    user_terminal: tuple[int, int],
) -> None:
    fd, user = user_terminal
    before = termios.tcgetattr(fd)
    handler = signal.getsignal(signal.SIGHUP)

    def hang_up() -> None:
        type_when_raw(fd, user, b"x")
        read_until(user, b"X")
        os.kill(os.getpid(), signal.SIGHUP)

    hanging = in_background(hang_up)
    with pytest.raises(SystemExit) as exited:
        _terminal.session(FakeTerminal(), stdin=fd, stdout=fd)
    hanging.join(_DEADLINE)
    assert exited.value.code == 128 + signal.SIGHUP
    assert termios.tcgetattr(fd) == before and signal.getsignal(signal.SIGHUP) == handler


def test_a_failing_sandbox_ends_the_session_with_the_terminal_restored(
    user_terminal: tuple[int, int],
) -> None:
    fd, _ = user_terminal
    before = termios.tcgetattr(fd)
    terminal = FakeTerminal()
    terminal.failure = EngineError("the engine went away")
    with pytest.raises(EngineError, match="went away"):
        _terminal.session(terminal, stdin=fd, stdout=fd)
    assert termios.tcgetattr(fd) == before


def test_without_input_the_terminal_stays_cooked(user_terminal: tuple[int, int]) -> None:
    fd, _ = user_terminal
    terminal = FakeTerminal()
    before = termios.tcgetattr(fd)
    ending = in_background(lambda: terminal._output.put(b""))
    _terminal.session(terminal, stdin=None, stdout=fd)
    ending.join(_DEADLINE)
    assert termios.tcgetattr(fd) == before and terminal.typed == b""


def test_window_size_of_no_terminal_is_the_default() -> None:
    read_end, write_end = os.pipe()
    try:
        assert _terminal.window_size(read_end, write_end) == _terminal.DEFAULT_SIZE
    finally:
        os.close(read_end)
        os.close(write_end)


# the commands -------------------------------------------------------------------------
def parse(*argv: str) -> Any:
    parser = build_parser()
    return parser.parse_args(canonical_argv(parser, argv))


def test_shell_parses_like_exec() -> None:
    args = parse("shell", "-u", "1000", "-e", "A=1", "box", "ls", "-l")
    assert (args.sandbox, args.user, args.env) == ("box", "1000", ["A=1"])
    assert command_words(args.argv) == ["ls", "-l"]
    assert (args.tty, args.interactive) == (True, True)
    assert command_words(parse("shell", "box").argv) == []


def test_shell_completes_sandbox_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    assert "['sandboxer shell']=@sandboxes" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "-it", "sandboxer/minimal", "sh"], "-t: the input device is not a TTY"),
        (["run", "-d", "-t", "sandboxer/minimal"], "-t: a detached sandbox's main process"),
        (["exec", "-it", "box", "sh"], "-t: the input device is not a TTY"),
        (["exec", "--json", "-t", "box", "sh"], "--json: collects the output"),
        (["shell", "box"], "-t: the input device is not a TTY"),
    ],
)
def test_terminal_refusals_come_before_any_engine(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # piped input: not a terminal
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert FakeBackend.sandboxes == {}


def on_terminal(
    monkeypatch: pytest.MonkeyPatch,
    fd: int,
    user: int,
    argv: list[str],
    keys: list[tuple[bytes, bytes]],
) -> int:
    """`main(argv)` with the CLI's stdin and stdout on `fd`; a user types each of `keys`
    once the one before showed what it waits for. Its exit code."""
    monkeypatch.setattr("sys.stdin", os.fdopen(os.dup(fd), "r"))
    monkeypatch.setattr("sys.stdout", os.fdopen(os.dup(fd), "w"))

    def user_types() -> None:
        for key, shown in keys:
            type_when_raw(fd, user, key)
            read_until(user, shown)

    typing = in_background(user_types)
    code = main(argv)
    typing.join(_DEADLINE)
    assert not typing.is_alive()  # everything awaited was shown
    return code


def test_run_it_runs_a_shell_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, user_terminal: tuple[int, int]
) -> None:
    fd, user = user_terminal
    before = termios.tcgetattr(fd)
    argv = ["run", "--backend", "fake", "-it", "sandboxer/minimal"]
    keys = [(b"echo x$?y\r", b"x0y"), (b"exit 3\r", b"exit 3")]
    assert on_terminal(monkeypatch, fd, user, argv, keys) == 3
    assert termios.tcgetattr(fd) == before
    assert FakeBackend.sandboxes == {}  # run removes what it launched


def test_shell_attaches_to_a_kept_sandbox(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    user_terminal: tuple[int, int],
) -> None:
    fd, user = user_terminal
    assert main(["run", "--backend", "fake", "-d", "--name", "kept"]) == 0
    capsys.readouterr()
    code = on_terminal(monkeypatch, fd, user, ["shell", "kept"], [(b"exit 5\r", b"exit 5")])
    assert code == 5 and list(FakeBackend.sandboxes) == ["kept"]
    box = FakeBackend.sandboxes["kept"]
    assert box.calls[-1] == (_terminal.SHELL,)
