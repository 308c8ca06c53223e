"""`sb.ports` maps tcp guest ports; `sb.port()` reaches a mapping of either protocol."""

from __future__ import annotations

import pytest

import sandboxer
from sandboxer import PortMapping


def test_tcp_and_udp_on_one_guest_port_do_not_collide() -> None:
    ports = [PortMapping(guest_port=53), PortMapping(guest_port=53, protocol="udp")]
    with sandboxer.launch(backend="fake", ports=ports) as sb:
        tcp, udp = sb.port(53), sb.port(53, protocol="udp")
        assert tcp[1] > 0 and udp[1] > 0
        assert sb.ports == {53: tcp}  # tcp only, as before


def test_udp_only_mapping_is_reached_through_port() -> None:
    with sandboxer.launch(backend="fake", ports=[PortMapping(5353, protocol="udp")]) as sb:
        assert sb.ports == {}
        assert sb.port(5353, "udp")[0] == "127.0.0.1"


def test_a_missing_mapping_names_the_argument() -> None:
    with sandboxer.launch(backend="fake", ports=[PortMapping(8080)]) as sb:
        with pytest.raises(sandboxer.InvalidSpec) as missing:
            sb.port(8080, "udp")
        assert missing.value.field == "guest_port"
        assert "no udp mapping of guest port 8080; mapped: 8080/tcp" in str(missing.value)
        with pytest.raises(sandboxer.InvalidSpec) as unknown:
            sb.port(8080, "sctp")
        assert unknown.value.field == "protocol"
