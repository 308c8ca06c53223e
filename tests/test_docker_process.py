"""Docker's process channel over a socket pair standing in for the hijacked exec socket
(no engine): stdin goes out as written, end of input is a half-close, output is framed
without a terminal and raw with one, and signals and resizes go where they should."""

from __future__ import annotations

import signal
import socket
import struct
from collections.abc import Iterator

import pytest

from sandboxer.backend import TerminalSize
from sandboxer.backends.docker._exec import ExecProcess, StartedExec


class Engine:
    """The engine's end of the socket, and what the channel asked of it."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.kills = 0
        self.signals: list[int] = []
        self.sizes: list[TerminalSize] = []

    def kill(self) -> None:
        self.kills += 1
        self.theirs.close()  # the command is gone: its stream ends

    def channel(self, *, terminal: bool) -> ExecProcess:
        started = StartedExec("exec-id", self.ours, self.kill, lambda: 7)
        return ExecProcess(
            started,
            terminal=terminal,
            timeout=None,
            send_signal=self.signals.append,
            resize=self.sizes.append,
        )


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = Engine()
    yield engine
    engine.ours.close()
    engine.theirs.close()


def test_stdin_then_end_of_input(engine: Engine) -> None:
    channel = engine.channel(terminal=False)
    channel.write(b"typed ")
    channel.write(b"in")
    channel.close_stdin()
    received = b""
    while data := engine.theirs.recv(100):
        received += data
    assert received == b"typed in"  # then EOF: the write side was shut down
    channel.write(b"after the end of input")  # nothing sent, no error


def test_framed_output_without_a_terminal(engine: Engine) -> None:
    channel = engine.channel(terminal=False)
    frame = struct.Struct(">BxxxL")
    engine.theirs.sendall(frame.pack(1, 3) + b"out" + frame.pack(2, 3) + b"err")
    engine.theirs.close()
    chunks = []
    try:
        while True:
            chunks.append(next(channel.output))
    except StopIteration as end:
        assert end.value.exit_code == 7
    assert b"".join(c for s, c in chunks if s == "stdout") == b"out"
    assert b"".join(c for s, c in chunks if s == "stderr") == b"err"


def test_raw_output_on_a_terminal(engine: Engine) -> None:
    channel = engine.channel(terminal=True)
    engine.theirs.sendall(b"\x01\x00\x00\x00 not a frame\r\n")
    engine.theirs.close()
    assert b"".join(chunk for _, chunk in channel.output) == b"\x01\x00\x00\x00 not a frame\r\n"


def test_close_stdin_on_a_terminal_keeps_its_input(engine: Engine) -> None:
    channel = engine.channel(terminal=True)
    channel.close_stdin()
    channel.write(b"still typed")
    assert engine.theirs.recv(100) == b"still typed"


def test_sigkill_kills_the_tree_and_other_signals_go_to_the_command(engine: Engine) -> None:
    channel = engine.channel(terminal=False)
    channel.signal(signal.SIGTERM)
    channel.signal(signal.SIGKILL)
    assert (engine.signals, engine.kills) == ([signal.SIGTERM], 1)


def test_resize_only_with_a_terminal(engine: Engine) -> None:
    engine.channel(terminal=False).resize(TerminalSize(10, 20))
    engine.channel(terminal=True).resize(TerminalSize(30, 40))
    assert engine.sizes == [TerminalSize(30, 40)]


def test_closing_the_output_early_kills(engine: Engine) -> None:
    channel = engine.channel(terminal=False)
    engine.theirs.sendall(struct.pack(">BxxxL", 1, 2) + b"hi")
    assert next(channel.output) == ("stdout", b"hi")
    channel.output.close()
    assert engine.kills == 1
    channel.signal(signal.SIGTERM)  # ended: nothing more is sent
    channel.resize(TerminalSize(1, 1))
    assert engine.signals == [] and engine.sizes == []
