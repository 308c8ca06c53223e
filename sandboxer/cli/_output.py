"""How the CLI writes: aligned tables, JSON, ages, errors, and a progress line on terminals."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sandboxer import ExecResult, Sandbox, SandboxInfo
from sandboxer.ownership import created_at, expires_at, owner_alive, owner_host, owner_pid, session

PROG = "sandboxer"
# The library logs here; the CLI decides where that goes and how much.
logger = logging.getLogger("sandboxer")
# Exit codes, as `docker run` uses them: bad usage, and sandboxer or the engine failing.
USAGE = 2
ENGINE_FAILURE = 125


def shown(message: str) -> str:
    """A message as a terminal may show it: each line without control or format
    characters (an error may quote a registry, an image or a sandbox)."""
    return "\n".join(
        "".join(c if c.isprintable() else "?" for c in line) for line in message.split("\n")
    )


def error(message: str) -> None:
    print(f"{PROG}: error: {shown(message)}", file=sys.stderr)


def note(message: str) -> None:
    print(f"{PROG}: {shown(message)}", file=sys.stderr)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the last one left ragged."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def age(seconds: float | None) -> str:
    """A short human age: 42s, 7m, 3h, 2d."""
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def owner(info: SandboxInfo) -> str:
    pid = owner_pid(info)
    if pid is None:
        return "?"
    alive = owner_alive(info)
    if alive is None:
        return f"{pid}@{owner_host(info) or '?'}"
    return f"{pid}" if alive else f"{pid} (exited)"


def info_dict(info: SandboxInfo, now: float) -> dict[str, Any]:
    """One sandbox as `ls --json` and `gc --json` print it."""
    created = created_at(info)
    expires = expires_at(info)
    return {
        "backend": info.backend,
        "name": info.name,
        "id": info.id,
        "state": info.state.value,
        "created_at": created,
        "age_seconds": None if created is None else round(now - created, 3),
        "owner_pid": owner_pid(info),
        "owner_host": owner_host(info),
        "owner_alive": owner_alive(info),
        "session": session(info),
        "expires_at": expires,
        "seconds_left": None if expires is None else round(max(0.0, expires - now), 3),
        "labels": dict(info.labels),
    }


def info_row(info: SandboxInfo, now: float) -> list[str]:
    created = created_at(info)
    return [
        info.backend,
        info.name,
        info.id[:12],
        info.state.value,
        age(None if created is None else now - created),
        owner(info),
        session(info) or "?",
        time_left(info, now),
    ]


def time_left(info: SandboxInfo, now: float) -> str:
    """What is left of the sandbox's max_lifetime: "-" without one."""
    expires = expires_at(info)
    if expires is None:
        return "-"
    return "expired" if expires <= now else age(expires - now)


INFO_HEADERS = ("BACKEND", "NAME", "ID", "STATE", "AGE", "OWNER", "SESSION", "LEFT")


def launched_dict(sandbox: Sandbox) -> dict[str, Any]:
    """A sandbox `run -d --json` launched."""
    return {"name": sandbox.name, "id": sandbox.id, "backend": sandbox.backend}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def result_dict(result: ExecResult) -> dict[str, Any]:
    """A command's outcome as `exec --json` prints it (output decoded as UTF-8)."""
    return {
        "exit_code": result.exit_code,
        "stdout": _text(result.stdout),
        "stderr": _text(result.stderr),
        "timed_out": result.timed_out,
        "truncated": result.truncated,
        "duration": round(result.duration, 3),
    }


@contextlib.contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner with the elapsed time on stderr while a long step runs (terminals only)."""
    # Debug logging writes to stderr too: a spinner would garble it.
    if not sys.stderr.isatty() or logger.isEnabledFor(logging.DEBUG):
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            sys.stderr.write(f"\r{frame} {message} {time.monotonic() - started:.1f}s")
            sys.stderr.flush()
            if done.wait(0.1):
                break

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        yield
    finally:
        done.set()
        spinner.join()
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
