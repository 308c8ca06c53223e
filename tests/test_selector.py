"""The selector's rules, as a table run against the pure `rank()`; then select()/probe_all()
with fake backends registered in-process. No engine is touched."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import attrs
import pytest

import sandboxer
from sandboxer import (
    Availability,
    Backend,
    BackendUnavailable,
    Capabilities,
    Requirements,
    SandboxSpec,
    UnsupportedFeature,
)
from sandboxer._selector import PREFERENCE_ENV, probe_all, rank, resolve_preference
from sandboxer.testing import FakeBackend

ALL_CONTROLS = {control: "fake mechanism" for control in sandboxer.CONTROLS}
NETWORKS = frozenset({"none", "isolated", "bridge"})
LIMITS = frozenset({"cpu_limit", "memory_limit", "pids_limit"})


def caps(kind: str, isolation: str, start: float, **changes: Any) -> Capabilities:
    base = Capabilities(
        kind=kind,
        isolation=isolation,
        init=kind != "app",
        custom_kernel=kind == "vm",
        nested=kind != "app",
        networks=NETWORKS,
        limits=LIMITS,
        mounts=True,
        ports=True,
        start_seconds=start,
        controls=ALL_CONTROLS,
    )
    return attrs.evolve(base, **changes)


DOCKER = caps("app", "process", 0.3)
INCUS = caps("system", "user", 0.5)
LIBVIRT = caps("vm", "kernel", 3.0)
PODMAN = caps("app", "user", 0.3)  # same kind and start cost as docker: only preference differs
FAST = caps("app", "process", 0.1)
THREE = {"docker": DOCKER, "incus": INCUS, "libvirt": LIBVIRT}

UP = Availability(True)
DOWN = Availability(False, "socket missing", "start the daemon")


@attrs.frozen
class Case:
    id: str
    spec: dict[str, Any] = attrs.field(factory=dict)
    capabilities: Mapping[str, Capabilities] = THREE
    availability: Mapping[str, Availability] = attrs.field(factory=dict)  # default: all UP
    preference: tuple[str, ...] = ("docker", "incus", "libvirt")
    expect: str | type[Exception] = "docker"
    reasons: tuple[str, ...] = ()  # substrings of the reason, or of the error message
    rejected: Mapping[str, str] = attrs.field(factory=dict)  # name -> substring of why


def req(**fields: Any) -> dict[str, Any]:
    return {"requirements": Requirements(**fields)}


NO_SECCOMP = {c: m for c, m in ALL_CONTROLS.items() if c != "seccomp"}
CASES = [
    Case("default", reasons=("single process", "closer fit than incus")),
    Case("kind app", req(kind="app"), rejected={"incus": "runs system", "libvirt": "runs vm"}),
    Case("kind system", req(kind="system"), expect="incus", rejected={"docker": "runs app"}),
    Case("kind vm", req(kind="vm"), expect="libvirt", reasons=("kind='vm'",)),
    Case(
        "custom kernel",
        req(custom_kernel=True),
        expect="libvirt",
        reasons=("custom kernel", "virtual machine"),
        rejected={"docker": "shares the host kernel", "incus": "shares the host kernel"},
    ),
    Case(
        "kernel isolation",
        req(isolation="kernel"),
        expect="libvirt",
        reasons=("kernel isolation",),
        rejected={"docker": "process is weaker than kernel", "incus": "user is weaker"},
    ),
    Case(
        "user isolation",
        req(isolation="user"),
        expect="incus",
        reasons=("nearest kind",),
        rejected={"docker": "isolation process is weaker than user"},
    ),
    Case("process isolation", req(isolation="process"), reasons=("closer fit",)),
    Case(
        "init",
        req(init=True),
        expect="incus",
        reasons=("init system", "closer fit than libvirt"),
        rejected={"docker": "cannot run an init system"},
    ),
    Case("nested", req(nested=True), expect="incus", rejected={"docker": "nested"}),
    Case(
        "init with kernel isolation",
        req(init=True, isolation="kernel"),
        expect="libvirt",
        rejected={"incus": "weaker than kernel", "docker": "init"},
    ),
    Case("init with custom kernel", req(init=True, custom_kernel=True), expect="libvirt"),
    Case(
        "init, system container down",
        req(init=True),
        availability={"incus": DOWN},
        expect="libvirt",
        reasons=("nearest kind",),
        rejected={"incus": "unavailable: socket missing (fix: start the daemon)"},
    ),
    Case(
        "default, app container down",
        availability={"docker": DOWN},
        expect="incus",
        reasons=("no available app backend",),
        rejected={"docker": "unavailable: socket missing"},
    ),
    Case(
        "init within 1s",
        req(init=True, max_start_seconds=1),
        expect="incus",
        reasons=("within max_start_seconds=1",),
        rejected={"libvirt": "starts in about 3s, more than max_start_seconds=1"},
    ),
    Case(
        "init within 0.4s",
        req(init=True, max_start_seconds=0.4),
        expect=UnsupportedFeature,
        reasons=("incus: starts in about 0.5s", "libvirt: starts in about 3s"),
    ),
    Case(
        "nothing starts in 0.1s",
        req(max_start_seconds=0.1),
        expect=UnsupportedFeature,
        reasons=("no backend can run this spec",),
    ),
    Case(
        "custom kernel within 1s",
        req(custom_kernel=True, max_start_seconds=1),
        expect=UnsupportedFeature,
        reasons=("libvirt: starts in about 3s",),
    ),
    Case(
        "lowest latency picks the fastest app container",
        req(max_start_seconds=0.2),
        capabilities={**THREE, "fast": FAST},
        expect="fast",
        rejected={"docker": "more than max_start_seconds=0.2"},
    ),
    Case(
        "explicit backend honoured",
        {"backend": "incus"},
        expect="incus",
        reasons=("backend='incus' was asked for explicitly",),
        rejected={"docker": "backend='incus' was asked for"},
    ),
    Case(
        "explicit backend cannot",
        {"backend": "docker", **req(init=True)},
        expect=UnsupportedFeature,
        reasons=("backend 'docker' cannot run this spec: cannot run an init system",),
    ),
    Case(
        "explicit backend unavailable",
        {"backend": "docker"},
        availability={"docker": DOWN},
        expect=BackendUnavailable,
        reasons=("socket missing", "fix: start the daemon"),
    ),
    Case("explicit backend unknown", {"backend": "nope"}, expect=BackendUnavailable),
    Case(
        "tie on kind and start cost: preference",
        capabilities={"docker": DOCKER, "podman": PODMAN},
        preference=("docker", "podman"),
        reasons=("preferred over podman by the preference order docker,podman",),
    ),
    Case(
        "tie on kind and start cost: preference reversed",
        capabilities={"docker": DOCKER, "podman": PODMAN},
        preference=("podman", "docker"),
        expect="podman",
    ),
    Case(
        "tie on kind: start cost first",
        capabilities={"docker": DOCKER, "fast": FAST},
        expect="fast",
        reasons=("starts faster than docker (~0.1s vs ~0.3s)",),
    ),
    Case(
        "everything down",
        availability={"docker": DOWN, "incus": DOWN, "libvirt": DOWN},
        expect=BackendUnavailable,
        reasons=("'docker'", "socket missing", "start the daemon"),
    ),
    Case(
        "mounts need a backend that shares directories",
        {"mounts": [sandboxer.Mount(tempfile.gettempdir(), "/data")], **req(kind="vm")},
        capabilities={"libvirt": attrs.evolve(LIBVIRT, mounts=False)},
        expect=UnsupportedFeature,
        reasons=("cannot share host directories",),
    ),
    Case(
        "published ports need a bridge network",
        {"ports": [sandboxer.PortMapping(8080)], "network": "bridge"},
        capabilities={"docker": attrs.evolve(DOCKER, networks=frozenset({"none"})), "incus": INCUS},
        expect="incus",
        rejected={"docker": "has no 'bridge' network"},
    ),
    Case(
        "a profile control the backend cannot enforce",
        req(custom_kernel=True),
        capabilities={
            "libvirt": attrs.evolve(
                LIBVIRT, controls=NO_SECCOMP, unenforceable={"seccomp": "no host filter"}
            )
        },
        expect=UnsupportedFeature,
        reasons=("cannot enforce profile 'hardened' controls (seccomp: no host filter)",),
    ),
    Case(
        "an unenforceable control the caller accepts",
        {"allow_unenforced": ["seccomp"], **req(custom_kernel=True)},
        capabilities={"libvirt": attrs.evolve(LIBVIRT, controls=NO_SECCOMP)},
        expect="libvirt",
    ),
    Case(
        "an explicit limit the backend cannot apply",
        {"resources": sandboxer.Resources(memory="64MiB")},
        capabilities={
            "docker": attrs.evolve(DOCKER, limits=frozenset({"pids_limit"})),
            "incus": INCUS,
        },
        expect="incus",
        rejected={"docker": "cannot limit memory"},
    ),
    Case(
        "a disk image boots only where disk images can",
        {"image": "/srv/images/debian.qcow2"},
        capabilities={**THREE, "libvirt": attrs.evolve(LIBVIRT, disk_images=True)},
        expect="libvirt",
        rejected={"docker": "cannot boot a disk image", "incus": "cannot boot a disk image"},
    ),
    Case(
        "a disk image and no backend that boots one",
        {"image": "/srv/images/debian.img"},
        expect=UnsupportedFeature,
        reasons=("cannot boot a disk image (/srv/images/debian.img)",),
    ),
    Case(
        "a backend that cannot be loaded",
        capabilities={"docker": DOCKER},
        availability={"incus": Availability(False, "cannot import pylxd", "pip install x")},
        rejected={"incus": "unavailable: cannot import pylxd (fix: pip install x)"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rules(case: Case) -> None:
    spec = SandboxSpec(**case.spec)
    availability = {name: UP for name in case.capabilities} | dict(case.availability)
    if isinstance(case.expect, str):
        selection = rank(spec, case.capabilities, availability, case.preference)
        assert selection.backend == case.expect, selection.explain()
        assert selection.candidates[0] == case.expect
        for fragment in case.reasons:
            assert fragment in selection.reason, selection.explain()
        for name, fragment in case.rejected.items():
            assert fragment in selection.rejected.get(name, ""), selection.explain()
        assert set(selection.candidates).isdisjoint(selection.rejected)
        assert set(selection.candidates) | set(selection.rejected) == set(availability)
    else:
        with pytest.raises(case.expect) as info:
            rank(spec, case.capabilities, availability, case.preference)
        for fragment in case.reasons:
            assert fragment in str(info.value)


def test_enough_cases() -> None:
    assert len(CASES) >= 25


def test_rank_is_pure_and_deterministic() -> None:
    spec = SandboxSpec()
    availability = {name: UP for name in THREE}
    first = rank(spec, THREE, availability)
    assert all(rank(spec, THREE, availability) == first for _ in range(3))
    assert first.candidates == ("docker", "incus", "libvirt")


def test_to_dict_is_json() -> None:
    selection = rank(
        SandboxSpec(requirements=Requirements(init=True)),
        THREE,
        {"docker": UP, "incus": UP, "libvirt": DOWN},
    )
    data = json.loads(json.dumps(selection.to_dict()))
    assert data["backend"] == "incus"
    assert data["candidates"] == ["incus"]
    assert set(data["rejected"]) == {"docker", "libvirt"}
    assert data["reason"] == "; ".join(data["reasons"])
    assert "selected incus" in selection.explain()


def test_preference_from_argument_env_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PREFERENCE_ENV, raising=False)
    assert resolve_preference() == ("docker", "incus", "libvirt")
    monkeypatch.setenv(PREFERENCE_ENV, " libvirt, podman ,,libvirt")
    assert resolve_preference() == ("libvirt", "podman", "docker", "incus")
    assert resolve_preference(["incus"]) == ("incus", "docker", "libvirt")
    assert resolve_preference("podman,docker") == ("podman", "docker", "incus", "libvirt")


# select() and probe_all() over fake backends registered in this process.


def fake_backend(name: str, capabilities: Capabilities, probe: Any) -> type[Backend]:
    """A Backend class with only what the selector reads: class data and `probe`."""

    class Fake(Backend):  # abstract methods stay unimplemented: the selector never instantiates
        probes: ClassVar[int] = 0

        @classmethod
        def probe(cls) -> Availability:
            cls.probes += 1
            return probe()  # type: ignore[no-any-return]

    Fake.name = name
    Fake.capabilities = capabilities
    return Fake


@pytest.fixture
def fakes() -> Iterator[dict[str, type[Backend]]]:
    """Fakes standing in for the three built-in names (registration shadows entry points)."""

    def slow() -> Availability:
        time.sleep(5)
        return UP

    def broken() -> Availability:
        raise RuntimeError("boom")

    classes = {
        "docker": fake_backend("docker", DOCKER, lambda: UP),
        "incus": fake_backend("incus", INCUS, slow),
        "libvirt": fake_backend("libvirt", LIBVIRT, broken),
    }
    for name, cls in classes.items():
        sandboxer.register_backend(name, cls, replace=True)
    yield classes
    for name in classes:
        sandboxer.unregister_backend(name)


def test_probes_are_parallel_bounded_and_cached(fakes: dict[str, type[Backend]]) -> None:
    start = time.monotonic()
    states = probe_all(list(fakes))
    elapsed = time.monotonic() - start
    assert elapsed < 1.5, f"probing took {elapsed:.2f}s"
    assert states["docker"].available
    assert not states["incus"].available and "within 1s" in states["incus"].reason
    assert not states["libvirt"].available and "RuntimeError: boom" in states["libvirt"].reason
    # The hung probe is not started twice: no thread piles up behind a stuck engine.
    again = probe_all(["incus"], fresh=True)["incus"]
    assert "did not answer a probe within 1s" in again.reason
    assert fakes["incus"].probes == 1  # type: ignore[attr-defined]
    probes = fakes["docker"].probes  # type: ignore[attr-defined]
    probe_all(["docker"])
    assert fakes["docker"].probes == probes  # type: ignore[attr-defined]
    probe_all(["docker"], fresh=True)
    assert fakes["docker"].probes == probes + 1  # type: ignore[attr-defined]


def test_concurrent_callers_share_one_probe_and_its_answer() -> None:
    class Slow(FakeBackend):
        probes = 0

        @classmethod
        def probe(cls) -> Availability:
            cls.probes += 1
            time.sleep(0.3)
            return Availability(True)

    sandboxer.register_backend("slow", Slow, replace=True)
    try:
        with ThreadPoolExecutor(8) as pool:
            states = list(pool.map(lambda _: probe_all(["slow"], fresh=False)["slow"], range(8)))
    finally:
        sandboxer.unregister_backend("slow")
    assert all(state.available for state in states)
    assert Slow.probes == 1


def test_select_from_requirements_with_reasons(fakes: dict[str, type[Backend]]) -> None:
    selection = sandboxer.select(Requirements())
    assert "docker" in selection.candidates  # tests/conftest.py's "fake" may rank first
    assert "within 1s" in selection.rejected["incus"]
    with pytest.raises(BackendUnavailable, match="'incus' is unavailable: did not answer"):
        sandboxer.select(Requirements(nested=True))
    assert sandboxer.select(SandboxSpec(), backend="docker").backend == "docker"
    with pytest.raises(BackendUnavailable, match="no such backend"):
        sandboxer.select(backend="nope")
