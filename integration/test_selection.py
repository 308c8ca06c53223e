"""Launching by requirements alone lands on the expected engine, which then runs a command.

Each case names the engine it must land on; only the cases whose engine is in --backends
are generated (a case for an engine not asked for is deselected, not skipped).
"""

from __future__ import annotations

import os

import attrs
import pytest

import sandboxer
from sandboxer import Requirements, SandboxSpec
from sandboxer._launch import make_plan

HOST_KERNEL = os.uname().release


@attrs.frozen
class Case:
    id: str
    requirements: Requirements
    backend: str


CASES = [
    Case("default", Requirements(), "docker"),
    Case("single process, fast start", Requirements(max_start_seconds=1), "docker"),
    Case("init system", Requirements(init=True), "incus"),
    Case("OS-like environment", Requirements(kind="system"), "incus"),
    Case("nested containers", Requirements(nested=True), "incus"),
    Case("custom kernel", Requirements(custom_kernel=True), "libvirt"),
    Case("kernel isolation", Requirements(isolation="kernel"), "libvirt"),
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        wanted = {n.strip() for n in str(metafunc.config.getoption("--backends")).split(",")}
        cases = [case for case in CASES if case.backend in wanted]
        metafunc.parametrize("case", cases, ids=[f"{c.backend}-{c.id}" for c in cases])


def spec_for(case: Case) -> SandboxSpec:
    """The default spec with `case`'s requirements.

    The hardened profile stays, except for the controls the expected engine declares it
    cannot enforce: those are accepted here so that this test is about selection only (the
    contract suite checks enforcement).
    """
    spec = SandboxSpec(requirements=case.requirements)
    # Asked of the backend for this very plan: e.g. nesting on Incus relaxes some controls.
    enforcement = sandboxer.get_backend(case.backend).enforcement(make_plan(spec))
    return attrs.evolve(
        spec, allow_unenforced=[c for c, s in enforcement.items() if not s.enforced]
    )


def test_lands_on_the_expected_engine_and_runs(case: Case) -> None:
    spec = spec_for(case)
    selection = sandboxer.select(spec)
    assert selection.backend == case.backend, selection.explain()
    with sandboxer.launch(spec) as sandbox:
        assert sandbox.backend == case.backend
        result = sandbox.exec(["uname", "-r"], timeout=60)
        assert result.exit_code == 0, result.stderr
        own_kernel = result.text.strip() != HOST_KERNEL
        kind = sandboxer.get_backend(case.backend).capabilities.kind
        # A VM boots its own (Debian) kernel; containers share the host's.
        assert own_kernel == (kind == "vm"), f"{case.backend} ({kind}): kernel {result.text!r}"
