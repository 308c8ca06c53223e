"""A command with its streams open (`start_process`): stdin written as it comes, on a
terminal (one websocket carrying the terminal both ways) or on three streams."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable

from sandboxer.backend import ProcessChannel, TerminalSize, logger

from . import _exec
from ._client import SentWait
from ._websocket import WebSocket

# How long the command is looked for: the exec's process takes a moment to appear.
_PID_SECONDS = 2.0
_PID_POLL = 0.01
# Where the command's pid is looked for: a function that finds it, or None if it cannot.
PidFinder = Callable[[], Callable[[], int | None] | None]


class IncusProcess(ProcessChannel):
    def __init__(
        self,
        waiter: SentWait,
        sockets: dict[int, WebSocket],
        *,
        terminal: bool,
        deadline: float | None,
        kill: Callable[[WebSocket], None],
        pid_finder: PidFinder,
    ) -> None:
        self._input, self._control = sockets[0], sockets[-1]
        self._terminal = terminal
        self._kill = kill
        self._found: int | None = None
        self._looked = threading.Event()
        self._input_open = True
        self._ended = False
        self._lock = threading.Lock()
        outputs = (
            {sockets[0]: "stdout"} if terminal else {sockets[1]: "stdout", sockets[2]: "stderr"}
        )
        self.output = _exec.relay(waiter, sockets, outputs, deadline, kill, self._end)
        # Looked for at once, in the background: the command may end before anyone asks.
        threading.Thread(target=self._look_for_pid, args=(pid_finder,), daemon=True).start()

    def _look_for_pid(self, pid_finder: PidFinder) -> None:
        try:
            find = pid_finder()
            deadline = time.monotonic() + _PID_SECONDS
            while find and not self._ended and time.monotonic() < deadline:
                self._found = find()
                if self._found is not None:
                    break
                time.sleep(_PID_POLL)
        except Exception as exc:  # the engine's state: no pid then, as on a remote engine
            logger.debug("looking for a process's pid: %s", exc)
        finally:
            self._looked.set()

    # A property where the interface has an attribute: the lookup may still be under way.
    @property
    def pid(self) -> int | None:  # type: ignore[override]
        """The command's pid in the sandbox, if this host sees the engine's processes."""
        self._looked.wait()
        return self._found

    def _end(self) -> None:
        # Incus ends the operation once our side of the input is over as well.
        self._ended = True
        self._end_input()

    def _end_input(self) -> None:
        self._looked.wait(_PID_SECONDS)  # (see write)
        with self._lock:
            if not self._input_open:
                return
            self._input_open = False
        _exec.feed(self._input, None)

    def write(self, data: bytes) -> None:
        # A command may end as soon as it has its input: found first, it has a pid after.
        self._looked.wait(_PID_SECONDS)
        if data and self._input_open and not self._ended:
            with contextlib.suppress(OSError):  # ended meanwhile: nothing reads it
                self._input.send(data)

    def close_stdin(self) -> None:
        # On a terminal, the end-of-input message would stop the terminal's input for good.
        if not self._terminal:
            self._end_input()

    def signal(self, signum: int) -> None:
        if self._ended:
            return
        if signum == signal.SIGKILL:
            self._kill(self._control)  # the whole tree, as a timeout does
        else:
            _exec.signal_command(self._control, signum)

    def resize(self, size: TerminalSize) -> None:
        if self._terminal and not self._ended:
            _exec.send_control(self._control, _exec.resize_message(size.rows, size.cols))
