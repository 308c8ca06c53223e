"""`inspect NAME` (what the engine and the labels say about a sandbox) and `top NAME`
(the processes inside it)."""

from __future__ import annotations

import argparse
import time
from typing import Any

import attrs

from sandboxer import attach, inventory

from . import _output

# Read /proc with the shell's builtins only: images may have no `ps`. The first line is
# the shell's own pid, so that it can be left out of the list.
TOP_SCRIPT = """\
echo "$$"
for d in /proc/[0-9]*; do
  { read -r stat < "$d/stat"; } 2>/dev/null || continue
  uid=?
  while read -r key value rest; do
    if [ "$key" = Uid: ]; then uid=$value; break; fi
  done < "$d/status" 2>/dev/null
  echo "$uid $stat"
done
"""
TOP_TIMEOUT = 30.0
TOP_HEADERS = ("PID", "PPID", "UID", "STATE", "COMMAND")


def register(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="show one sandbox: backend, state, owner, labels",
        description="Show what the engine and sandboxer's labels say about one of our "
        "sandboxes, found by name, id or id prefix.",
    )
    inspect.add_argument("sandbox", metavar="NAME")
    inspect.add_argument(
        "--json", action="store_true", help="print JSON (as one `ls --json` entry)"
    )
    inspect.set_defaults(handler=inspect_command)

    top = commands.add_parser(
        "top",
        help="list the processes running in a sandbox",
        description="List the processes in a sandbox, read from its /proc by its shell.",
    )
    top.add_argument("sandbox", metavar="NAME")
    top.set_defaults(handler=top_command)


def printable(text: str) -> str:
    """`text` with control characters (which a sandbox may plant) shown as `?`."""
    return "".join(c if c.isprintable() else "?" for c in text)


def inspect_command(args: argparse.Namespace) -> int:
    info = inventory().find(args.sandbox)
    details = _output.info_dict(info, time.time())
    if args.json:
        _output.print_json(details)
        return 0
    labels = details.pop("labels")
    rows = [[key, "-" if value is None else str(value)] for key, value in details.items()]
    rows += [[f"label {key}", value] for key, value in sorted(labels.items())]
    cells = [[printable(cell) for cell in row] for row in rows]
    print(_output.table(("FIELD", "VALUE"), cells))
    return 0


@attrs.frozen
class Process:
    pid: int
    ppid: int
    uid: str
    state: str
    command: str


def parse_top(output: str) -> list[Process]:
    """The processes TOP_SCRIPT printed, without its own shell; malformed lines skipped."""
    lines = output.splitlines()
    shell = lines[0].strip() if lines else ""
    processes = []
    for line in lines[1:]:
        uid, _, stat = line.partition(" ")
        pid, _, rest = stat.partition(" (")
        command, _, fields = rest.rpartition(") ")
        state_ppid = fields.split()[:2]
        if pid == shell or len(state_ppid) < 2 or not pid.isdigit() or not state_ppid[1].isdigit():
            continue
        processes.append(Process(int(pid), int(state_ppid[1]), uid, state_ppid[0], command))
    return sorted(processes, key=lambda process: process.pid)


def top_command(args: argparse.Namespace) -> int:
    result = attach(args.sandbox).exec(["sh", "-c", TOP_SCRIPT], timeout=TOP_TIMEOUT).check()
    rows = [
        [str(p.pid), str(p.ppid), printable(p.uid), printable(p.state), printable(p.command)]
        for p in parse_top(result.stdout.decode("utf-8", "replace"))
    ]
    print(_output.table(TOP_HEADERS, rows))
    return 0
