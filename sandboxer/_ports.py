"""Choosing free host ports for mappings that leave host_port unset."""

from __future__ import annotations

import socket

import attrs

from ._models import PortMapping


def free_port(host_ip: str, protocol: str) -> int:
    """A port the OS reports free on host_ip now (the engine binds it moments later)."""
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as probe:
        probe.bind((host_ip, 0))
        port: int = probe.getsockname()[1]
        return port


def assign_host_ports(ports: tuple[PortMapping, ...]) -> tuple[PortMapping, ...]:
    return tuple(
        p
        if p.host_port is not None
        else attrs.evolve(p, host_port=free_port(p.host_ip, p.protocol))
        for p in ports
    )
