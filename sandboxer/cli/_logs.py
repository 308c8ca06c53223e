"""`logs [-f] NAME`: what a sandbox's main process (or console) printed.

The library reads logs whole (a bounded tail), so `-f` polls and prints what is new:
the text after the last part already printed. Following ends when the sandbox stops or
goes away, or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from sandboxer import Sandbox, SandboxNotFound, SandboxState, attach

POLL_SECONDS = 1.0
# How much of what was printed is looked for in the next read to find where it ends.
ANCHOR = 4096


def register(commands: Any) -> None:
    logs = commands.add_parser(
        "logs",
        help="print what a sandbox's main process printed",
        description="Print the output of a sandbox's main process (a VM's console); "
        "-f keeps printing until the sandbox stops, or Ctrl-C.",
    )
    logs.add_argument("sandbox", metavar="NAME")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    logs.set_defaults(handler=logs_command)


def new_text(printed: str, current: str) -> str:
    """What `current` (a fresh, possibly tail-trimmed read) holds after `printed`."""
    if current.startswith(printed):
        return current[len(printed) :]
    anchor = printed[-ANCHOR:]
    # The first match: with repeated text, showing a part again beats losing one.
    found = current.find(anchor) if anchor else -1
    # Without the anchor the two reads share nothing we can find: show the new read whole.
    return current if found < 0 else current[found + len(anchor) :]


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def follow(
    sandbox: Sandbox,
    write: Callable[[str], None] = _write,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print the logs, then what they gain, until the sandbox is no longer running."""
    printed = ""
    while True:
        try:
            running = sandbox.state is SandboxState.RUNNING
            current = sandbox.logs()  # after the state: nothing written before it is lost
        except SandboxNotFound:
            return
        write(new_text(printed, current))
        printed = current
        if not running:
            return
        sleep(POLL_SECONDS)


def logs_command(args: argparse.Namespace) -> int:
    sandbox = attach(args.sandbox)
    if args.follow:
        follow(sandbox)
    else:
        _write(sandbox.logs())
    return 0
