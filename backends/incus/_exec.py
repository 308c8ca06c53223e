"""exec through Incus' exec endpoint and its websockets: stdin, separate streams, a deadline.

pylxd's `execute()` polls its streams with sleep(0.1); here one selector loop (any
descriptor number, unlike select()) reads stdout and stderr as they arrive, and a thread
feeds stdin so a command that writes while it reads cannot deadlock against us.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any

from sandboxer.backend import EngineError, ExecGenerator, ExitStatus

from ._client import Incus, SentWait
from ._errors import incus_errors
from ._websocket import BINARY, CLOSE, TEXT, WebSocket

_STREAMS = {1: "stdout", 2: "stderr"}
# Incus' words when forkexec could not start the command inside the sandbox.
_NOT_STARTED = "Failed to retrieve PID of executing child process"
_GRACE_AFTER_KILL = 5.0


def _feed(websocket: WebSocket, data: bytes | None) -> None:
    with contextlib.suppress(OSError):
        if data:
            websocket.send(data)
        websocket.send_barrier()


class NotStarted(EngineError):
    """Incus could not start the command (typically: the sandbox is at its pids limit)."""


def start(incus: Incus, name: str, body: dict[str, Any]) -> tuple[SentWait, dict[int, WebSocket]]:
    """Start an exec: (its result to come, websockets by fd, -1 being the control channel)."""
    with incus_errors():
        response = incus.api.instances[name].exec.post(json=body)
        payload = response.json()
    operation = Incus.operation_id(payload)
    fds = payload["metadata"]["metadata"]["fds"]
    sockets: dict[int, WebSocket] = {}
    try:
        # The command starts once 0, 1 and 2 are connected; control must be connected by
        # then (a quick command could end before it is). So two batches of handshakes.
        for batch in ((-1, "control"), (0, "0"), (1, "1")), ((2, "2"),):
            sockets.update(incus.websockets(operation, {fd: fds[key] for fd, key in batch}))
        waiter = SentWait(incus.endpoint, operation)  # while the command runs
    except BaseException as exc:
        for websocket in sockets.values():
            websocket.close()
        if isinstance(exc, OSError):  # the operation's own error says more
            _result(lambda: incus.wait_operation(operation, timeout=5))
        with incus_errors():
            raise
    return waiter, sockets


def _result(wait: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The finished operation's metadata; NotStarted if Incus never started the command."""
    try:
        return wait()
    except EngineError as exc:
        if _NOT_STARTED in str(exc):
            raise NotStarted(str(exc)) from exc
        raise


def stream(
    waiter: SentWait,
    sockets: dict[int, WebSocket],
    stdin: bytes | None,
    timeout: float | None,
    kill: Callable[[WebSocket], None],
) -> ExecGenerator:
    """Yield output until both streams end, killing the command at the deadline (or when
    the caller closes this generator before the end)."""
    writer = None
    if stdin:
        writer = threading.Thread(target=_feed, args=(sockets[0], stdin), daemon=True)
        writer.start()
    else:
        _feed(sockets[0], None)  # EOF at once: a command reading stdin sees it empty
    open_streams = {sockets[1]: 1, sockets[2]: 2}
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = finished = False
    # selectors, not select(): descriptors above 1024 are fine.
    selector = selectors.DefaultSelector()
    for websocket in open_streams:
        selector.register(websocket, selectors.EVENT_READ)
    try:
        while open_streams:
            ready = [ws for ws in open_streams if ws.pending()]
            if not ready:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                ready = [key.fileobj for key, _ in selector.select(wait)]  # type: ignore[misc]
            if not ready:
                if timed_out:
                    break  # killed, yet the streams did not end: give up on them
                timed_out = True
                kill(sockets[-1])
                deadline = time.monotonic() + _GRACE_AFTER_KILL
                continue
            for websocket in ready:
                try:
                    messages = websocket.receive()
                except OSError:
                    messages = [(CLOSE, b"")]  # reset: the operation's result tells why
                for opcode, payload in messages:
                    if opcode != BINARY:
                        open_streams.pop(websocket, None)  # barrier or close: stream over
                        selector.unregister(websocket)
                        break
                    if payload:
                        yield _STREAMS[open_streams[websocket]], payload
        finished = True
        if timed_out:
            return ExitStatus(exit_code=-1, timed_out=True)
        metadata = _result(waiter.result)
    finally:
        if not finished:  # the caller stopped reading (or passed a cap): as on a timeout
            with contextlib.suppress(Exception):
                kill(sockets[-1])
        selector.close()
        waiter.close()
        # Closing the control channel also makes Incus kill a command still running.
        for websocket in sockets.values():
            with contextlib.suppress(OSError):
                websocket.close()
        if writer is not None:
            writer.join(timeout=1)
    return ExitStatus(exit_code=int((metadata.get("metadata") or {}).get("return", -1)))


def signal_command(control: WebSocket, signal: int) -> None:
    """Ask Incus to signal the command itself (not its children) via the control channel."""
    with contextlib.suppress(OSError):
        control.send(json.dumps({"command": "signal", "signal": signal}).encode(), TEXT)
