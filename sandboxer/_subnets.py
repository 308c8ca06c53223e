"""Picking IPv4 subnets for new networks, and member addresses inside one."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable

from ._errors import SandboxError

# Where new networks' /24s are picked: private, and wide enough that two concurrent
# picks rarely meet (the engines refuse an overlap with their own networks anyway).
_POOL = ipaddress.IPv4Network("10.128.0.0/10")
_PREFIX = 24


def host_routes() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this host routes to directly (its links, engines' bridges)."""
    found = []
    with open("/proc/net/route", encoding="ascii") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            destination = int(fields[1], 16).to_bytes(4, "little")
            mask = int(fields[7], 16).to_bytes(4, "little")
            if destination != b"\0\0\0\0":
                network = f"{ipaddress.IPv4Address(destination)}/{ipaddress.IPv4Address(mask)}"
                found.append(ipaddress.IPv4Network(network, strict=False))
    return found


def free_subnet(
    taken: Iterable[str], routes: Iterable[ipaddress.IPv4Network]
) -> ipaddress.IPv4Network:
    """A random /24 of the pool that overlaps no engine network and no host route."""
    used = [ipaddress.IPv4Network(s) for s in taken if s] + list(routes)
    spans = [(int(n.network_address), int(n.broadcast_address)) for n in used]
    size = 2 ** (32 - _PREFIX)
    count = _POOL.num_addresses // size
    # From a random start, then in order: a full pool is told apart from an unlucky draw.
    start = random.Random().randrange(count)
    for step in range(count):
        first = int(_POOL.network_address) + ((start + step) % count) * size
        last = first + size - 1
        if not any(low <= last and first <= high for low, high in spans):
            return ipaddress.IPv4Network((first, _PREFIX))
    raise SandboxError(f"no free /{_PREFIX} left in {_POOL} for a new network")


def member_address(subnet: str, taken: Iterable[str]) -> ipaddress.IPv4Interface:
    """A random host address of `subnet` ("10.140.7.0/24") that is neither its gateway
    (the first host address) nor in `taken`, with the subnet's prefix."""
    network = ipaddress.IPv4Network(subnet)
    used = {ipaddress.IPv4Address(a.split("/")[0]) for a in taken}
    used.add(network.network_address + 1)
    free = network.num_addresses - 2 - len(used)
    if free <= 0:
        raise SandboxError(f"network {subnet} has no free address left")
    rng = random.Random()
    while True:
        candidate = network.network_address + rng.randrange(2, network.num_addresses - 1)
        if candidate not in used:
            return ipaddress.IPv4Interface(f"{candidate}/{network.prefixlen}")


def gateway(subnet: str) -> ipaddress.IPv4Interface:
    """The subnet's first host address, where the engine's bridge (and DNS) sits."""
    network = ipaddress.IPv4Network(subnet)
    return ipaddress.IPv4Interface(f"{network.network_address + 1}/{network.prefixlen}")
