"""`Backend.check` is the one decider: what an adapter cannot honour is refused there,
before any engine object is made, by `select` and by `launch` alike.

Each adapter case launches through an adapter whose engine connection was never made
and whose `create` fails the test: a refusal that came from anywhere but `check` would
show up as that failure (or as an AttributeError on the missing client).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

import sandboxer
from sandboxer import Mount, PortMapping, SandboxSpec
from sandboxer._backend import Availability, Backend, Capabilities, Handle, LaunchPlan
from sandboxer._launch import make_plan
from sandboxer.testing import FakeBackend

ENGINELESS = "engineless"


def _engineless(adapter: type[Backend]) -> type[Backend]:
    """`adapter` with no engine connection, available, and a `create` that fails the test."""

    class Engineless(adapter):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:  # no client: any engine call raises AttributeError
            pass

        @classmethod
        def probe(cls) -> Availability:
            return Availability(True)

        def create(self, plan: LaunchPlan) -> Handle:
            pytest.fail(f"create reached for a plan check() should have refused: {plan.name}")

    return Engineless


def _adapter(name: str) -> type[Backend]:
    module = pytest.importorskip(f"sandboxer.backends.{name}")
    adapter: type[Backend] = getattr(module, f"{name.capitalize()}Backend")
    return adapter


@pytest.fixture
def engineless() -> Iterator[Any]:
    def register(name: str) -> type[Backend]:
        sandboxer.register_backend(ENGINELESS, _engineless(_adapter(name)), replace=True)
        return _adapter(name)

    yield register
    sandboxer.unregister_backend(ENGINELESS)


def _cases(tmp: Path) -> list[tuple[str, dict[str, Any], str]]:
    profile = sandboxer.load_profile("hardened")
    return [
        ("docker", {"network": "isolated", "ports": [PortMapping(8080)]}, "isolated"),
        (
            "incus",
            {"image": "sandboxer/systemd", "requirements": {"init": True}, "command": ["x"]},
            "boots systemd",
        ),
        ("incus", {"mounts": [Mount(str(tmp), "/my data")]}, "nosuid,nodev"),
        ("incus", {"env": {"MULTI": "one\ntwo"}}, "line break"),
        ("incus", {"profile": profile.derive("odd", tmpfs={"/my tmp": 1024})}, "tmpfs"),
        (
            "incus",
            {"profile": profile.derive("x", extras={"incus": {"security.privileged": "true"}})},
            "security.privileged",
        ),
        (
            "incus",
            {"profile": profile.derive("x", extras={"incus": {"security.syscalls.deny": "x"}})},
            "security.syscalls.deny",
        ),
        (
            "incus",
            {
                "profile": profile.derive(
                    "x", extras={"incus": {"raw.lxc": "lxc.hook.pre-start = /bin/sh -c id"}}
                )
            },
            "root on the host",
        ),
        ("libvirt", {"network": "bridge", "ports": [PortMapping(80, host_ip="::1")]}, "IPv4"),
        ("libvirt", {"mounts": [Mount(str(tmp), "/da\\ta")]}, "backslash"),
        (
            "libvirt",
            {"image": "/srv/images/debian.qcow2", "mounts": [Mount(str(tmp), '/d"x')]},
            "double quote",
        ),
    ]


@pytest.mark.parametrize("index", range(11))
def test_adapter_refusals_come_from_check_before_any_engine_call(
    engineless: Any, tmp_path: Path, index: int
) -> None:
    name, fields, fragment = _cases(tmp_path)[index]
    adapter = engineless(name)
    spec = SandboxSpec(backend=ENGINELESS, allow_unenforced=["seccomp"], **fields)
    assert any(fragment in refusal for refusal in adapter.refusals(make_plan(spec)))
    with pytest.raises(sandboxer.UnsupportedFeature, match=fragment):
        sandboxer.launch(spec)


class _Refusing(FakeBackend):
    checked: ClassVar[list[str]] = []

    @classmethod
    def refusals(cls, plan: LaunchPlan) -> list[str]:
        cls.checked.append(plan.name)
        return ["refuses every plan"]

    def create(self, plan: LaunchPlan) -> Handle:
        pytest.fail("create reached")


@pytest.fixture
def refusing() -> Iterator[type[_Refusing]]:
    sandboxer.register_backend("refusing", _Refusing)
    yield _Refusing
    sandboxer.unregister_backend("refusing")


def test_select_and_launch_both_ask_check(refusing: type[_Refusing]) -> None:
    spec = SandboxSpec(backend="refusing", profile="default")
    with pytest.raises(sandboxer.UnsupportedFeature, match="refuses every plan"):
        sandboxer.select(spec)
    before = dict(FakeBackend.sandboxes)
    verdict = sandboxer.get_backend("refusing").check(make_plan(spec))
    assert verdict.refusals == ("refuses every plan",) and not verdict.ok
    assert FakeBackend.sandboxes == before


@pytest.mark.parametrize("root", ["root", "0", "00", "000:1000"])
def test_check_reports_statuses_and_relaxed_controls(root: str) -> None:
    spec = SandboxSpec(backend="fake", network="bridge", user=root)
    verdict = sandboxer.get_backend("fake").check(make_plan(spec))
    assert verdict.ok
    assert not verdict.statuses["network"].enforced
    assert "relaxed by the spec" in verdict.statuses["non_root_user"].mechanism
    assert verdict.statuses["seccomp"].enforced


class _Narrowed(FakeBackend):
    probes: ClassVar[int] = 0

    def probe_capabilities(self) -> Capabilities:
        type(self).probes += 1
        return attrs.evolve(self.capabilities, networks=frozenset({"none"}))


def test_capabilities_are_probed_once_per_instance_and_decide() -> None:
    backend = _Narrowed()
    plan = make_plan(SandboxSpec(backend="fake", network="isolated", profile="default"))
    assert backend.check(plan).refusals == ("has no 'isolated' network",)
    assert backend.check(plan).refusals and _Narrowed.probes == 1


def test_extras_for_an_engine_that_takes_none_are_refused() -> None:
    profile = sandboxer.load_profile("default").derive("x", extras={"fake": {"a": "b"}})
    plan = make_plan(SandboxSpec(backend="fake", profile=profile))
    assert FakeBackend.refusals(plan) == ["fake takes no profile extras, got a"]
