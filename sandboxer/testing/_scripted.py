"""A ProcessChannel a test drives by hand: what the engine sends, and when it ends."""

from __future__ import annotations

import queue
import signal

from .._backend import ExecGenerator, ExitStatus, ProcessChannel, TerminalSize


class ScriptedChannel(ProcessChannel):
    """`send` output, then `finish` with a status or `fail` with an engine error; records
    what the core asked of it. SIGKILL ends it as killed (exit code 137)."""

    def __init__(self, pid: int | None = 42) -> None:
        self.pid = pid
        self._items: queue.Queue[tuple[str, bytes] | ExitStatus | Exception] = queue.Queue()
        self.written: list[bytes] = []
        self.signals: list[int] = []
        self.sizes: list[TerminalSize] = []
        self.stdin_closed = False
        self.closed_early = False
        self.output = self._output()

    def send(self, stream: str, data: bytes) -> None:
        self._items.put((stream, data))

    def finish(self, status: ExitStatus) -> None:
        self._items.put(status)

    def fail(self, error: Exception) -> None:
        self._items.put(error)

    def _output(self) -> ExecGenerator:
        finished = False
        try:
            while True:
                item = self._items.get()
                if isinstance(item, ExitStatus):
                    finished = True
                    return item
                if isinstance(item, Exception):
                    finished = True
                    raise item
                yield item
        finally:
            self.closed_early = not finished

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close_stdin(self) -> None:
        self.stdin_closed = True

    def signal(self, signum: int) -> None:
        self.signals.append(signum)
        if signum == signal.SIGKILL:
            self.finish(ExitStatus(128 + signal.SIGKILL))

    def resize(self, size: TerminalSize) -> None:
        self.sizes.append(size)
