"""Host input from internal networks' bridges: replies and DNS only.

An internal named network has no route out, but the host side of its bridge, where the
engine's DNS answers, would still reach every host service listening on 0.0.0.0 (or on
::, through the bridge's link-local address). Adapters that make such a bridge name it
with `INTERNAL_BRIDGE_PREFIX` and call `guard_internal_bridges()`: one chain per address
family, jumped to first from INPUT for every interface with that prefix, lets through
replies to the host's own connections, DNS and DHCP, and drops everything else.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import threading

from ._errors import EngineError

INTERNAL_BRIDGE_PREFIX = "sbi"
CHAIN = "SANDBOXER-INTERNAL"
# As `iptables -S` prints them, so that a chain already right is left alone.
_RULES = (
    "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-p udp -m udp --dport 53 -j ACCEPT",
    "-p tcp -m tcp --dport 53 -j ACCEPT",
    "-p udp -m udp --dport {dhcp} -j ACCEPT",
    "-j DROP",
)
_JUMP = ("-i", INTERNAL_BRIDGE_PREFIX + "+", "-j", CHAIN)
_LOCK_PATH = "/run/sandboxer-bridge-guard.lock"
_lock = threading.Lock()
_done = False


def _run(tool: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-w", *arguments], capture_output=True, text=True, check=False, timeout=30
    )


def _wanted(tool: str) -> list[str]:
    """`iptables -S CHAIN` as it reads when the chain holds exactly our rules."""
    dhcp = 547 if tool == "ip6tables" else 67
    return [f"-N {CHAIN}"] + [f"-A {CHAIN} {rule.format(dhcp=dhcp)}" for rule in _RULES]


def _guard(tool: str) -> None:
    listed = _run(tool, "-S", CHAIN)
    wanted = _wanted(tool)
    if listed.returncode != 0 or listed.stdout.split("\n")[:-1] != wanted:
        _run(tool, "-N", CHAIN)
        _run(tool, "-F", CHAIN)
        for line in wanted[1:]:
            done = _run(tool, *line.split())
            if done.returncode != 0:
                raise EngineError(f"{tool}: cannot add {line!r}: {done.stderr.strip()}")
    if _run(tool, "-C", "INPUT", *_JUMP).returncode != 0:
        done = _run(tool, "-I", "INPUT", "1", *_JUMP)
        if done.returncode != 0:
            raise EngineError(f"{tool}: cannot guard internal bridges: {done.stderr.strip()}")


def guard_internal_bridges() -> None:
    """Make sure the host drops what internal bridges send it, but DNS (idempotent;
    once per process, serialised across processes)."""
    global _done
    with _lock:
        if _done:
            return
        for tool in ("iptables", "ip6tables"):
            if shutil.which(tool) is None:
                raise EngineError(
                    f"{tool} is missing: internal networks need it to keep their members "
                    "away from the host's services; fix: apt-get install iptables"
                )
        with open(_LOCK_PATH, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            for tool in ("iptables", "ip6tables"):
                _guard(tool)
        _done = True
