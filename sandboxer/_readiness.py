"""Waiting until a sandbox is ready: a port that accepts, a log line, a command that succeeds.

Each wait polls until its deadline, then raises `NotReady` with the sandbox's last log
lines. What the sandbox says (its logs, /proc/net tables, command output) is read with
bounds and parsed, never trusted further.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from . import _arguments as arguments
from ._errors import EngineError, InvalidSpec, NotReady
from ._models import ExecResult
from ._vocabulary import Protocol, member

T = TypeVar("T")
# A proxy in front of a published port (docker-proxy, Incus' forkproxy, QEMU's slirp)
# accepts every connection, and closes it at once when nothing listens behind it. A
# connection still open after this long has a listener at the other end.
_PROXY_SETTLE = 0.3
_LOG_LINES_SHOWN = 20
_LOG_LINE_CHARS = 300
# /proc/net/{tcp,udp}[6] socket states: TCP_LISTEN, and TCP_CLOSE (a bound UDP socket).
_LISTENING = {Protocol.TCP: "0A", Protocol.UDP: "07"}
_NET_TABLE_MAX = 4 * 1024 * 1024


def deadline_loop(
    check: Callable[[], T | None],
    awaited: str,
    timeout: float,
    interval: float,
    logs: Callable[[], str],
) -> T:
    """Call `check` every `interval` seconds until it returns something, or raise NotReady."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotReady(awaited, timeout, last_lines(logs))
        time.sleep(min(interval, left))


def last_lines(logs: Callable[[], str]) -> str:
    """The sandbox's last log lines, each cut short: for an error message."""
    try:
        text = logs()
    except Exception as exc:  # the wait's own error matters more than this one
        return f"(its logs could not be read: {exc})"
    lines = text.splitlines()[-_LOG_LINES_SHOWN:]
    return "\n".join(line[:_LOG_LINE_CHARS] for line in lines)


def wait_arguments(timeout: object, interval: object) -> tuple[float, float]:
    return arguments.timeout(timeout), arguments.timeout(interval, "interval")


def guest_port_argument(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise InvalidSpec("guest_port", f"expected a port number (1 to 65535), got {value!r}")
    return value


def protocol_argument(value: str) -> Protocol:
    return member(Protocol, "protocol", value)


def pattern_argument(value: object) -> re.Pattern[str]:
    """A log pattern: a regular expression (str) or a compiled one, matched per line."""
    if isinstance(value, re.Pattern) and isinstance(value.pattern, str):
        return value
    if not isinstance(value, str) or not value:
        raise InvalidSpec("pattern", f"expected a regular expression (str), got {value!r}")
    try:
        return re.compile(value, re.MULTILINE)
    except re.error as exc:
        raise InvalidSpec("pattern", f"not a regular expression: {exc}") from None


def matching_line(pattern: re.Pattern[str], text: str) -> str | None:
    """The first whole line of `text` that `pattern` matches in."""
    found = pattern.search(text)
    if found is None:
        return None
    start = text.rfind("\n", 0, found.start()) + 1
    end = text.find("\n", found.start())
    return text[start : None if end == -1 else end]


def accepts_on_host(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port reaches a listener (see _PROXY_SETTLE)."""
    try:
        connection = socket.create_connection((host, port), timeout=1.0)
    except OSError:
        return False
    with connection:
        connection.settimeout(_PROXY_SETTLE)
        try:
            return connection.recv(1) != b""  # a greeting: a server; EOF: a bare proxy
        except TimeoutError:
            return True  # open and quiet: a server waiting for the client to speak
        except OSError:
            return False  # reset by a proxy with nothing behind it


def net_table_argv(protocol: Protocol) -> tuple[str, ...]:
    name = protocol.value
    return ("cat", f"/proc/net/{name}", f"/proc/net/{name}6")


def listening_in(table: bytes, port: int, protocol: Protocol) -> bool:
    """Whether /proc/net/{tcp,udp}[6] text (hostile: parsed loosely, bounded) shows a
    socket bound to `port` in the listening state."""
    wanted = f"{port:04X}"
    for raw in table[:_NET_TABLE_MAX].splitlines()[1:]:
        fields = raw.decode("ascii", "replace").split()
        if len(fields) < 4 or ":" not in fields[1]:
            continue
        if fields[1].rpartition(":")[2].upper() == wanted and fields[3] == _LISTENING[protocol]:
            return True
    return False


def checked_table(result: ExecResult, argv: Sequence[str]) -> bytes:
    """The tables `argv` printed: one of tcp/tcp6 may be missing (no IPv6), not both."""
    if result.exit_code in (126, 127):
        raise EngineError(
            f"waiting for a port that is not published runs {argv[0]!r} inside the sandbox, "
            "and this image has none; publish the port (ports=[...]) so it is checked "
            "from the host"
        )
    return result.stdout
