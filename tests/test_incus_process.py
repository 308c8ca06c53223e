"""Incus' `start_process` channel over socket pairs standing in for the daemon: what goes
out on the terminal and control websockets, and how the output ends."""

from __future__ import annotations

import json
import select
import signal
import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest

from sandboxer.backend import ExitStatus, TerminalSize
from sandboxer.backends.incus import _exec
from sandboxer.backends.incus._process import IncusProcess
from sandboxer.backends.incus._websocket import BINARY, CLOSE, TEXT, WebSocket


class Waiter:
    """The operation's result, as `SentWait` gives it once the command ended."""

    def __init__(self, code: int) -> None:
        self.code = code

    def result(self) -> dict[str, Any]:
        return {"metadata": {"return": self.code}}

    def close(self) -> None:
        pass


class Daemon:
    """The daemon's ends of the websockets of one exec, by fd (-1: control)."""

    def __init__(self, fds: tuple[int, ...]) -> None:
        self.ends: dict[int, WebSocket] = {}
        self.ours: dict[int, WebSocket] = {}
        for fd in fds:
            mine, theirs = socket.socketpair()
            self.ours[fd], self.ends[fd] = WebSocket(mine), WebSocket(theirs)
        self.killed: list[WebSocket] = []

    def received(self, fd: int) -> list[tuple[int, bytes]]:
        """What the client sent on `fd` so far (waiting a moment for the first of it)."""
        end = self.ends[fd]
        messages: list[tuple[int, bytes]] = []
        while select.select([end], [], [], 0.5)[0]:
            for message in end.receive():
                if message[0] == CLOSE:  # the client closed this websocket
                    return messages
                messages.append(message)
        return messages

    def process(self, terminal: bool) -> IncusProcess:
        return IncusProcess(
            cast(Any, Waiter(3)),
            self.ours,
            terminal=terminal,
            deadline=None,
            kill=self.killed.append,
            pid_finder=lambda: None,
        )

    def close(self) -> None:
        for websocket in (*self.ends.values(), *self.ours.values()):
            websocket.close()


@pytest.fixture
def terminal() -> Iterator[Daemon]:
    daemon = Daemon((-1, 0))
    yield daemon
    daemon.close()


@pytest.fixture
def pipes() -> Iterator[Daemon]:
    daemon = Daemon((-1, 0, 1, 2))
    yield daemon
    daemon.close()


def finish(process: IncusProcess) -> tuple[list[tuple[str, bytes]], ExitStatus]:
    chunks = []
    while True:
        try:
            chunks.append(next(process.output))
        except StopIteration as stop:
            return chunks, stop.value


def test_resize_message_holds_strings_as_incus_reads_them() -> None:
    assert json.loads(_exec.resize_message(30, 100)) == {
        "command": "window-resize",
        "args": {"width": "100", "height": "30"},
    }


def test_a_terminal_is_one_websocket_both_ways(terminal: Daemon) -> None:
    process = terminal.process(terminal=True)
    process.write(b"ls\r")
    process.resize(TerminalSize(30, 100))
    process.signal(signal.SIGTERM)
    process.close_stdin()  # the barrier would end the terminal's input: not sent
    assert terminal.received(0) == [(BINARY, b"ls\r")]
    control = [json.loads(payload) for _, payload in terminal.received(-1)]
    assert control == [
        {"command": "window-resize", "args": {"width": "100", "height": "30"}},
        {"command": "signal", "signal": signal.SIGTERM},
    ]
    terminal.ends[0].send(b"file\r\n")
    terminal.ends[0].send_barrier()  # the command ended
    assert finish(process) == ([("stdout", b"file\r\n")], ExitStatus(3))
    # Incus ends the operation once our side says its input is over too.
    assert terminal.received(0)[:1] == [(TEXT, b"")]


def test_pipes_keep_stdout_and_stderr_apart(pipes: Daemon) -> None:
    process = pipes.process(terminal=False)
    process.write(b"in")
    process.close_stdin()
    process.close_stdin()
    assert pipes.received(0) == [(BINARY, b"in"), (TEXT, b"")]
    pipes.ends[2].send(b"err")
    pipes.ends[2].send_barrier()
    pipes.ends[1].send_barrier()
    assert finish(process) == ([("stderr", b"err")], ExitStatus(3))
    process.resize(TerminalSize(1, 1))  # no terminal: nothing to resize
    assert pipes.received(-1) == []


def test_sigkill_kills_the_tree_and_an_ended_command_takes_nothing(pipes: Daemon) -> None:
    process = pipes.process(terminal=False)
    process.signal(signal.SIGKILL)
    assert pipes.killed == [pipes.ours[-1]]
    for fd in (1, 2):
        pipes.ends[fd].send_barrier()
    finish(process)
    process.signal(signal.SIGKILL)
    process.write(b"late")
    assert pipes.killed == [pipes.ours[-1]] and pipes.received(-1) == []


def test_closing_the_output_early_kills_the_command(terminal: Daemon) -> None:
    process = terminal.process(terminal=True)
    terminal.ends[0].send(b"x")
    assert next(process.output) == ("stdout", b"x")
    process.output.close()
    assert terminal.killed == [terminal.ours[-1]]
