"""exec over Docker's hijacked attach socket: stdin, separate streams, and a deadline;
and a process whose stdin stays open (`start_process`) over the same socket."""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from sandboxer.backend import ExecGenerator, ExitStatus, ProcessChannel, TerminalSize

_HEADER = struct.Struct(">BxxxL")  # stream type (1 stdout, 2 stderr), payload size
_STREAMS = {1: "stdout", 2: "stderr"}
_GRACE_AFTER_KILL = 5.0


def _feed_stdin(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


class _Frames:
    """Docker's framing (8-byte header, then payload), undone as bytes arrive: a payload
    is passed on in pieces, never held whole, whatever size its header claims."""

    def __init__(self) -> None:
        self._header = b""
        self._stream = "stdout"
        self._left = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes) -> Iterator[tuple[str, bytes]]:
        view = memoryview(data)
        while view:
            if self._left:
                piece, view = view[: self._left], view[self._left :]
                self._left -= len(piece)
                yield self._stream, bytes(piece)
                continue
            need = _HEADER.size - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) == _HEADER.size:
                kind, self._left = _HEADER.unpack(self._header)
                self._stream, self._header = _STREAMS.get(kind, "stdout"), b""


class StartedExec(NamedTuple):
    """An exec Docker started: its id, hijacked socket, and how to end it."""

    exec_id: str
    raw: Any
    kill: Callable[[], None]  # the command and everything it started
    exit_code: Callable[[], int]


def _socket(raw: Any) -> socket.socket:
    sock: socket.socket = raw._sock if hasattr(raw, "_sock") else raw
    return sock


def stream_exec(
    raw: Any,
    stdin: bytes | None,
    timeout: float | None,
    kill: Callable[[], None],
    exit_code: Callable[[], int],
    *,
    framed: bool = True,
) -> ExecGenerator:
    """Demultiplex Docker's framed output until EOF (on a terminal it comes raw, all as
    "stdout"), killing the process at the deadline (or when the caller closes this
    generator before the end)."""
    sock = _socket(raw)
    writer = None
    if stdin is not None:
        writer = threading.Thread(target=_feed_stdin, args=(sock, stdin), daemon=True)
        writer.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = finished = False
    frames = _Frames()
    # selectors, not select(): descriptors above 1024 are fine.
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not selector.select(wait):
                if timed_out:
                    break  # killed, yet the stream did not close: give up on it
                timed_out = True
                kill()
                deadline = time.monotonic() + _GRACE_AFTER_KILL
                continue
            data = sock.recv(65536)
            if not data:
                break
            if framed:
                yield from frames.feed(data)
            else:
                yield "stdout", data
        finished = True
    finally:
        if not finished:  # the caller stopped reading (or passed a cap): as on a timeout
            with contextlib.suppress(Exception):
                kill()
        selector.close()
        with contextlib.suppress(OSError):
            sock.close()
        with contextlib.suppress(Exception):
            raw.close()
        if writer is not None:
            writer.join(timeout=1)
    return ExitStatus(exit_code=-1 if timed_out else exit_code(), timed_out=timed_out)


class ExecProcess(ProcessChannel):
    """A Docker exec whose stdin stays open: bytes go to the hijacked socket as they come,
    end of input is the socket's write side shut down."""

    def __init__(
        self,
        started: StartedExec,
        *,
        terminal: bool,
        timeout: float | None,
        send_signal: Callable[[int], None],
        resize: Callable[[TerminalSize], None],
    ) -> None:
        self._sock = _socket(started.raw)
        self._terminal = terminal
        self._kill = started.kill
        self._send_signal = send_signal
        self._resize = resize
        self._lock = threading.Lock()  # one writer at a time, and none after the shutdown
        self._input_open = True
        self._ended = False
        stream = stream_exec(
            started.raw, None, timeout, started.kill, started.exit_code, framed=not terminal
        )
        self.output = self._watch(stream)

    def _watch(self, stream: ExecGenerator) -> ExecGenerator:
        try:
            return (yield from stream)
        finally:
            self._ended = True

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._input_open and not self._ended:
                with contextlib.suppress(OSError):  # ended meanwhile: nothing reads it
                    self._sock.sendall(data)

    def close_stdin(self) -> None:
        if self._terminal:
            return  # a terminal has no end of input short of its end
        with self._lock:
            if self._input_open and not self._ended:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)
            self._input_open = False

    def signal(self, signum: int) -> None:
        if self._ended:
            return
        if signum == signal.SIGKILL:
            self._kill()  # the whole tree, as a timeout does
        else:
            self._send_signal(signum)

    def resize(self, size: TerminalSize) -> None:
        if self._terminal and not self._ended:
            self._resize(size)
