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

# Incus' words when forkexec could not start the command inside the sandbox.
_NOT_STARTED = "Failed to retrieve PID of executing child process"
_GRACE_AFTER_KILL = 5.0


def feed(websocket: WebSocket, data: bytes | None) -> None:
    with contextlib.suppress(OSError):
        if data:
            websocket.send(data)
        websocket.send_barrier()


class NotStarted(EngineError):
    """Incus could not start the command (typically: the sandbox is at its pids limit)."""


def start(incus: Incus, name: str, body: dict[str, Any]) -> tuple[SentWait, dict[int, WebSocket]]:
    """Start an exec: (its result to come, websockets by fd, -1 being the control channel;
    with `interactive`, fd 0 alone carries the terminal both ways)."""
    with incus_errors():
        response = incus.api.instances[name].exec.post(json=body)
        payload = response.json()
    operation = Incus.operation_id(payload)
    fds = payload["metadata"]["metadata"]["fds"]
    channels = [(-1, "control"), *((fd, str(fd)) for fd in range(3) if str(fd) in fds)]
    sockets: dict[int, WebSocket] = {}
    try:
        # The command starts once its data channels are connected; control must be
        # connected by then (a quick command could end before it is). So two batches of
        # handshakes: the last data channel alone in the second.
        for batch in channels[:-1], channels[-1:]:
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


def deadline_after(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def stream(
    waiter: SentWait,
    sockets: dict[int, WebSocket],
    stdin: bytes | None,
    deadline: float | None,
    kill: Callable[[WebSocket], None],
) -> ExecGenerator:
    """An exec's output, its stdin fed (then closed) by a thread of its own."""
    writer = None
    if stdin:
        writer = threading.Thread(target=feed, args=(sockets[0], stdin), daemon=True)
        writer.start()
    else:
        feed(sockets[0], None)  # EOF at once: a command reading stdin sees it empty
    try:
        outputs = {sockets[1]: "stdout", sockets[2]: "stderr"}
        return (yield from relay(waiter, sockets, outputs, deadline, kill))
    finally:
        if writer is not None:
            writer.join(timeout=1)


def relay(
    waiter: SentWait,
    sockets: dict[int, WebSocket],
    outputs: dict[WebSocket, str],
    deadline: float | None,
    kill: Callable[[WebSocket], None],
    ended: Callable[[], None] = lambda: None,
) -> ExecGenerator:
    """Yield output until every stream in `outputs` ends, killing the command at the
    deadline (or when the caller closes this generator before the end); then `ended`,
    and the command's exit status."""
    open_streams = dict(outputs)
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
                        yield open_streams[websocket], payload
        finished = True
        ended()
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
    return ExitStatus(exit_code=int((metadata.get("metadata") or {}).get("return", -1)))


def control_message(command: str, **fields: Any) -> bytes:
    """A message for the exec's control channel."""
    return json.dumps({"command": command, **fields}).encode()


def resize_message(rows: int, cols: int) -> bytes:
    # Incus reads the arguments as strings.
    return control_message("window-resize", args={"width": str(cols), "height": str(rows)})


def send_control(control: WebSocket, message: bytes) -> None:
    with contextlib.suppress(OSError):  # the command ended: nothing to tell it
        control.send(message, TEXT)


def signal_command(control: WebSocket, signal: int) -> None:
    """Ask Incus to signal the command itself (not its children) via the control channel."""
    send_control(control, control_message("signal", signal=signal))
