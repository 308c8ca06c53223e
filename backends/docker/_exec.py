"""exec over Docker's hijacked attach socket: stdin, separate streams, and a deadline."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from sandboxer._backend import ExecGenerator, ExitStatus

_HEADER = struct.Struct(">BxxxL")  # stream type (1 stdout, 2 stderr), payload size
_STREAMS = {1: "stdout", 2: "stderr"}
_GRACE_AFTER_KILL = 5.0


def _feed_stdin(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def stream_exec(
    raw: Any,
    stdin: bytes | None,
    timeout: float | None,
    kill: Callable[[], None],
    exit_code: Callable[[], int],
) -> ExecGenerator:
    """Demultiplex Docker's framed output until EOF, killing the process at the deadline."""
    sock: socket.socket = raw._sock if hasattr(raw, "_sock") else raw
    writer = None
    if stdin is not None:
        writer = threading.Thread(target=_feed_stdin, args=(sock, stdin), daemon=True)
        writer.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    buffer = b""
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([sock], [], [], wait)
            if not readable:
                if timed_out:
                    break  # killed, yet the stream did not close: give up on it
                timed_out = True
                kill()
                deadline = time.monotonic() + _GRACE_AFTER_KILL
                continue
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
            while len(buffer) >= _HEADER.size:
                kind, size = _HEADER.unpack_from(buffer)
                if len(buffer) < _HEADER.size + size:
                    break
                payload = buffer[_HEADER.size : _HEADER.size + size]
                buffer = buffer[_HEADER.size + size :]
                if payload:
                    yield _STREAMS.get(kind, "stdout"), payload
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        with contextlib.suppress(Exception):
            raw.close()
        if writer is not None:
            writer.join(timeout=1)
    return ExitStatus(exit_code=-1 if timed_out else exit_code(), timed_out=timed_out)
