"""Progress of pulls, builds and conversions on stderr: a redrawn bar on terminals, and one
plain line per phase anywhere else (pipes and logs get no control codes).

A reporter is called as `progress(phase, done, total)` (the image store's `Progress`):
`total` is None while unknown. Amounts of 1 KiB and more are shown as sizes, smaller ones as
counts (layers, steps): callers report bytes or items, never both in one phase.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from ._output import logger

_REDRAW_SECONDS = 0.1
_BAR_WIDTH = 24
# Text from an engine or an image (build output, phase names) may carry terminal escapes.
# C1 controls too: some terminals read U+009B as the start of a control sequence.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_MAX_LINE = 4096


def clean(text: str) -> str:
    """`text` without terminal control sequences, one line, bounded."""
    return _CONTROL.sub("", text.replace("\r", "").replace("\n", " "))[:_MAX_LINE]


def size(count: float) -> str:
    """A short human size: 512 B, 1.5 KB, 27.0 MB (binary multiples, as `du -h`)."""
    for unit in ("B", "KB", "MB"):
        if abs(count) < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def amount(done: int, total: int | None) -> str:
    """`12.0/27.0 MB`-style text for the numbers a reporter gave ("" before any)."""
    if total is None and done == 0:
        return ""  # a phase that has only begun
    if max(done, total or 0) < 1024:
        return f"{done}/{total}" if total is not None else str(done)
    if total is None:
        return size(done)
    return f"{size(done)}/{size(total)}"


class ProgressDisplay:
    """The reporter: `display(phase, done, total)`; `display.line(text)` prints a log line."""

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self._stream = stream
        self._live = live
        self._lock = threading.Lock()  # engines may report from their own threads
        self._phase: str | None = None
        self._state: tuple[int, int | None] = (0, None)
        self._drawn = 0.0
        self._shown = False  # a bar is on the current terminal line

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        phase = clean(phase)
        with self._lock:
            changed = phase != self._phase
            if changed and self._phase is not None and self._live:
                self._draw()
                self._stream.write("\n")  # keep the finished phase visible above the bar
                self._shown = False
            self._phase, self._state = phase, (done, total)
            if not self._live:
                if changed:
                    self._stream.write(f"{phase}\n")
                    self._stream.flush()
                return
            now = time.monotonic()
            if changed or done == total or now - self._drawn >= _REDRAW_SECONDS:
                self._draw()
                self._drawn = now

    def line(self, text: str) -> None:
        """A line of output (a build step's), printed above the bar."""
        with self._lock:
            if self._shown:
                self._stream.write("\r\033[K")
            self._stream.write(f"{clean(text)}\n")
            self._shown = False
            if self._live and self._phase is not None:
                self._draw()
            self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._shown:
                self._draw()
                self._stream.write("\n")
                self._stream.flush()
                self._shown = False

    def _draw(self) -> None:
        done, total = self._state
        bar = ""
        if total:
            filled = min(_BAR_WIDTH, _BAR_WIDTH * done // total)
            bar = f" [{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {100 * done // total:3d}%"
        text = f"{self._phase}{bar} {amount(done, total)}".rstrip()
        width = shutil.get_terminal_size().columns - 1
        self._stream.write(f"\r\033[K{text[:width]}")
        self._stream.flush()
        self._shown = True


@contextlib.contextmanager
def display(stream: TextIO | None = None) -> Iterator[ProgressDisplay]:
    """A reporter on `stream` (stderr): live on a terminal unless debug logging shares it."""
    stream = stream or sys.stderr
    live = stream.isatty() and not logger.isEnabledFor(logging.DEBUG)
    reporter = ProgressDisplay(stream, live=live)
    try:
        yield reporter
    finally:
        reporter.close()
