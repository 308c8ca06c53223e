"""The host's guard around named networks' bridges: what may reach the host, and be routed.

An internal named network has no route out, but the host side of its bridge, where the
engine's DNS answers, would still reach every host service listening on 0.0.0.0 (or on
::, through the bridge's link-local address); and a member allowed to change its routes
could send through the host, which forwards, to anywhere. Adapters that make such a
bridge name it with `INTERNAL_BRIDGE_PREFIX` and call `guard_network_bridges()`. Per
address family, two chains are jumped to first for every interface with that prefix:
- filter INPUT: replies to the host's own connections, DNS and DHCP pass; the rest drops;
- mangle FORWARD, in and out: only traffic bridged between the members passes (Docker's
  br_netfilter sends that through FORWARD too); anything routed drops.
Bridges of named networks with a way out (`NAMED_BRIDGE_PREFIX`) get a third chain, in
mangle FORWARD: their members may route out through the host's uplink, but nothing
routed starts a connection into them, and they route into no other sandboxes' bridge.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import threading

import attrs

from ._errors import EngineError

INTERNAL_BRIDGE_PREFIX = "sbi"
NAMED_BRIDGE_PREFIX = "sbn"  # the bridges of named networks with a way out
_BRIDGES = INTERNAL_BRIDGE_PREFIX + "+"
_NAMED = NAMED_BRIDGE_PREFIX + "+"
# Other sandboxes' bridges on this host (engines' defaults and sandboxer's own): a named
# network's member must not route into them; their engines' rules may accept anything
# that arrives (Incus accepts all forwarding to and from its bridges).
_LOCAL_BRIDGES = (
    _BRIDGES,
    "docker0",
    "br-+",
    "virbr+",
    "sbx+",
    "sandboxerbr+",
    "incusbr+",
    "lxdbr+",
)
_LOCK_PATH = "/run/sandboxer-bridge-guard.lock"


@attrs.frozen
class _Chain:
    table: str
    name: str
    parent: str
    # As `iptables -S` prints them, so that a chain already right is left alone.
    rules: tuple[str, ...]
    jumps: tuple[str, ...]  # the interface matches jumping to it from `parent`


_CHAINS = (
    _Chain(
        "filter",
        "SANDBOXER-INTERNAL",
        "INPUT",
        (
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-p udp -m udp --dport 53 -j ACCEPT",
            "-p tcp -m tcp --dport 53 -j ACCEPT",
            "-p udp -m udp --dport {dhcp} -j ACCEPT",
            "-j DROP",
        ),
        (f"-i {_BRIDGES}",),
    ),
    _Chain(
        "mangle",
        "SANDBOXER-INTERNAL-FWD",
        "FORWARD",
        ("-m physdev ! --physdev-is-bridged -j DROP",),
        (f"-i {_BRIDGES}", f"-o {_BRIDGES}"),
    ),
    _Chain(
        "mangle",
        "SANDBOXER-NAMED-FWD",
        "FORWARD",
        (
            "-m physdev --physdev-is-bridged -j RETURN",  # between members of one network
            f"-o {_NAMED} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            f"-o {_NAMED} -j DROP",  # nothing routed starts a connection into one
            *(f"-i {_NAMED} -o {bridge} -j DROP" for bridge in _LOCAL_BRIDGES),
        ),
        (f"-i {_NAMED}", f"-o {_NAMED}"),
    ),
)
_lock = threading.Lock()
_done = False


def _run(tool: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-w", *arguments], capture_output=True, text=True, check=False, timeout=30
    )


def _wanted(tool: str, chain: _Chain) -> list[str]:
    """`iptables -S CHAIN` as it reads when the chain holds exactly our rules."""
    dhcp = 547 if tool == "ip6tables" else 67
    return [f"-N {chain.name}"] + [
        f"-A {chain.name} {rule.format(dhcp=dhcp)}" for rule in chain.rules
    ]


def _guard(tool: str, chain: _Chain) -> None:
    table = ("-t", chain.table)
    listed = _run(tool, *table, "-S", chain.name)
    wanted = _wanted(tool, chain)
    if listed.returncode != 0 or listed.stdout.split("\n")[:-1] != wanted:
        _run(tool, *table, "-N", chain.name)
        _run(tool, *table, "-F", chain.name)
        for line in wanted[1:]:
            done = _run(tool, *table, *line.split())
            if done.returncode != 0:
                raise EngineError(f"{tool}: cannot add {line!r}: {done.stderr.strip()}")
    for match in chain.jumps:
        jump = (*match.split(), "-j", chain.name)
        if _run(tool, *table, "-C", chain.parent, *jump).returncode != 0:
            done = _run(tool, *table, "-I", chain.parent, "1", *jump)
            if done.returncode != 0:
                raise EngineError(f"{tool}: cannot guard internal bridges: {done.stderr.strip()}")


def guard_network_bridges() -> None:
    """Make sure the host guards named networks' bridges as above (idempotent; once per
    process, serialised across processes)."""
    global _done
    with _lock:
        if _done:
            return
        for tool in ("iptables", "ip6tables"):
            if shutil.which(tool) is None:
                raise EngineError(
                    f"{tool} is missing: internal networks need it to keep their members "
                    "away from the host and from routing out; fix: apt-get install iptables"
                )
        with open(_LOCK_PATH, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            for tool in ("iptables", "ip6tables"):
                for chain in _CHAINS:
                    _guard(tool, chain)
        _done = True
