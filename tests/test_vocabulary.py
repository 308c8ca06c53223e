"""Closed vocabularies are string enums: plain strings go in, members come out."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

import sandboxer
from sandboxer import PortMapping, Requirements, SandboxSpec
from sandboxer._vocabulary import Control, Isolation, Kind, NetworkMode, Protocol


def test_fields_hold_members_that_still_read_as_the_strings_given() -> None:
    spec = SandboxSpec(network="none", requirements=Requirements(kind="vm", isolation="user"))
    assert spec.network == "none"
    assert spec.network is NetworkMode.NONE
    assert spec.requirements.kind is Kind.VM and spec.requirements.isolation is Isolation.USER
    assert PortMapping(53, protocol="udp").protocol is Protocol.UDP
    assert f"{spec.network} {spec.network!r}" == "none 'none'"
    assert json.dumps({"network": spec.network}) == '{"network": "none"}'


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: SandboxSpec(network="wifi"), "network"),
        (lambda: Requirements(kind="pod"), "Requirements.kind"),
        (lambda: Requirements(isolation="total"), "Requirements.isolation"),
        (lambda: PortMapping(80, protocol="sctp"), "PortMapping.protocol"),
        (lambda: sandboxer.load_profile("default").derive("x", network="wifi"), "profile.network"),
    ],
)
def test_a_word_outside_the_vocabulary_names_its_field(
    build: Callable[[], object], field: str
) -> None:
    with pytest.raises(sandboxer.InvalidSpec, match=field):
        build()


def test_controls_and_limits_share_one_vocabulary() -> None:
    assert set(sandboxer.CONTROLS) == set(Control)
    caps = sandboxer.get_backend("fake").capabilities
    assert caps.limits == {Control.CPU_LIMIT, Control.MEMORY_LIMIT, Control.PIDS_LIMIT}
    with pytest.raises(ValueError, match="cpus"):
        Control("cpus")
