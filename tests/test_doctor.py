"""The doctor over fake engines registered in-process (they shadow the real names)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import sandboxer
from sandboxer import (
    Availability,
    Backend,
    Capabilities,
    Check,
    CheckColumn,
    ImageNotFound,
    doctor,
)
from sandboxer._registry import INSTALL_HINTS
from sandboxer.doctor import diagnose

APP = Capabilities(
    kind="app",
    isolation="process",
    init=False,
    custom_kernel=False,
    nested=False,
    networks=frozenset({"none", "isolated", "bridge"}),
    limits=frozenset({"cpu_limit", "memory_limit", "pids_limit"}),
    mounts=True,
    ports=True,
    start_seconds=0.3,
    controls={control: "fake" for control in sandboxer.CONTROLS},
)
SYSTEM = attrs.evolve(
    APP, kind="system", isolation="user", init=True, nested=True, start_seconds=0.5
)

REACHABLE, PERMISSION = CheckColumn.REACHABLE, CheckColumn.PERMISSION
HEALTHY = (
    Check("reachable: socket", True, "/run/fake.sock", column=REACHABLE),
    Check("permission: socket", True, "uid 0", column=PERMISSION),
)
NO_PERMISSION = (
    Check("reachable: socket", True, "/run/fake.sock", column=REACHABLE),
    Check(
        "permission: socket",
        False,
        "not writable by uid 1000",
        "sudo usermod -aG fake $(id -un)",
        column=PERMISSION,
    ),
)


def engine(
    name: str,
    capabilities: Capabilities = APP,
    *,
    up: bool = True,
    checks: tuple[Check, ...] = HEALTHY,
    run: Callable[[], list[Check]] | None = None,
) -> type[Backend]:
    """A fake engine class: class data, a probe and a diagnose (never instantiated)."""

    class Fake(Backend):
        @classmethod
        def probe(cls) -> Availability:
            return (
                Availability(True)
                if up
                else Availability(False, f"{name} is down", f"start {name}")
            )

        @classmethod
        def diagnose(cls) -> list[Check]:
            return run() if run else list(checks)

    Fake.name = name
    Fake.capabilities = capabilities
    return Fake


@pytest.fixture
def register(fake_backend: type[Backend]) -> Iterator[Callable[..., None]]:
    """Register engines for one test. Every other registered name (the real engines' entry
    points, the session's "fake") is shadowed by an unimportable one meanwhile."""
    shadowed = [name for name in sandboxer.backend_names() if name != "fake"]
    sandboxer.unregister_backend("fake")
    for name in shadowed:
        sandboxer.register_backend(name, "sandboxer_test_absent_sdk:Backend", replace=True)
    names: list[str] = list(shadowed)

    def add(name: str, backend: type[Backend] | str) -> None:
        sandboxer.register_backend(name, backend, replace=True)
        names.append(name)

    yield add
    for name in names:
        sandboxer.unregister_backend(name)
    sandboxer.register_backend("fake", fake_backend, replace=True)


def test_all_healthy(register: Callable[..., None]) -> None:
    register("docker", engine("docker"))
    register("incus", engine("incus", SYSTEM))
    report = diagnose(["docker", "incus"])
    assert report.ok
    assert report.default == "docker"
    docker = next(e for e in report.engines if e.name == "docker")
    assert [docker.column(column) for column in CheckColumn] == [True] * 3
    text = report.render()
    assert "OK: the default backend docker can run a sandbox now" in text
    assert "docker *" in text and "problems:" not in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["default"]["backend"] == "docker"
    assert data["engines"]["incus"]["ready"] is True
    assert data["engines"]["docker"]["checks"][0]["name"] == "installed: Python SDK"


def test_default_falls_back_when_the_first_choice_is_down(register: Callable[..., None]) -> None:
    register("docker", engine("docker", up=False))
    register("incus", engine("incus", SYSTEM))
    report = diagnose()
    assert report.ok and report.default == "incus"
    docker = next(e for e in report.engines if e.name == "docker")
    assert not docker.ready
    assert [(c.name, c.fix) for c in docker.problems] == [("probe", "start docker")]


def test_default_engine_failing_a_check_is_not_ok(register: Callable[..., None]) -> None:
    register("docker", engine("docker", checks=NO_PERMISSION))
    report = diagnose()
    assert not report.ok
    text = report.render()
    assert "NOT OK: docker cannot run a sandbox now" in text
    assert "docker: permission: socket: not writable by uid 1000" in text
    assert "fix: sudo usermod -aG fake $(id -un)" in text
    docker = report.engines[0]
    assert docker.column(PERMISSION) is False and docker.column(REACHABLE) is True


def test_missing_sdk_shows_the_install_hint(register: Callable[..., None]) -> None:
    register("docker", engine("docker"))
    register("libvirt", "sandboxer_no_such_sdk_module:Backend")  # importing it fails
    report = diagnose()
    assert report.ok  # the default path does not need libvirt
    libvirt = next(e for e in report.engines if e.name == "libvirt")
    assert libvirt.column(CheckColumn.INSTALLED) is False and not libvirt.ready
    assert libvirt.problems[0].fix == INSTALL_HINTS["libvirt"]
    assert f"fix: {INSTALL_HINTS['libvirt']}" in report.render()


def test_nothing_can_run(register: Callable[..., None]) -> None:
    register("docker", engine("docker", up=False))
    report = diagnose()
    assert not report.ok and report.default is None
    assert "NOT OK: no backend can run a default sandbox" in report.render()
    assert report.to_dict()["default"]["backend"] is None


def test_engines_named_must_be_ready_too(register: Callable[..., None]) -> None:
    register("docker", engine("docker"))
    register("incus", engine("incus", SYSTEM, up=False))
    report = diagnose(["incus"])
    assert [e.name for e in report.engines] == ["incus", "docker"]  # the default is always checked
    assert not report.ok
    assert "NOT OK: incus cannot run a sandbox now" in report.render()
    assert diagnose(["docker"]).ok


def test_unknown_engine(register: Callable[..., None]) -> None:
    register("docker", engine("docker"))
    report = diagnose(["nope"])
    nope = report.engines[0]
    assert nope.name == "nope" and nope.column(CheckColumn.INSTALLED) is False
    assert not report.ok


def test_a_diagnose_that_raises_or_hangs_is_reported(
    register: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom() -> list[Check]:
        raise RuntimeError("boom")

    def hang() -> list[Check]:
        time.sleep(5)
        return []

    monkeypatch.setattr(doctor, "DIAGNOSE_TIMEOUT_SECONDS", 0.3)
    register("docker", engine("docker", run=boom))
    register("incus", engine("incus", SYSTEM, run=hang))
    start = time.monotonic()
    report = diagnose()
    assert time.monotonic() - start < 2
    details = {e.name: [c.detail for c in e.problems] for e in report.engines}
    assert details["docker"] == ["diagnose() failed: RuntimeError: boom"]
    assert details["incus"] == ["diagnose() did not finish within 0.3s"]
    assert not report.ok


def test_columns_without_checks(register: Callable[..., None]) -> None:
    register("docker", engine("docker", checks=()))
    report = diagnose()
    docker = report.engines[0]
    # No permission check: unknown. No reachability check: the probe answers for it.
    assert docker.column(PERMISSION) is None and docker.column(REACHABLE) is True
    assert "-" in report.render().splitlines()[3].split()


def test_a_check_lands_in_the_column_it_names_not_the_one_its_name_says(
    register: Callable[..., None],
) -> None:
    checks = (
        Check("reachable: wording only", False, "no column given"),
        Check("socket mode", False, "too open", column=PERMISSION),
    )
    register("docker", engine("docker", checks=checks))
    docker = diagnose().engines[0]
    assert docker.column(REACHABLE) is True  # the probe's answer: no check names the column
    assert docker.column(PERMISSION) is False
    assert not docker.ready  # every check counts for "can run now"


def test_host_without_busybox(
    register: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_busybox() -> Any:
        raise ImageNotFound("the built-in images need a static busybox")

    monkeypatch.setattr(doctor, "_busybox", no_busybox)
    register("docker", engine("docker"))
    report = diagnose()
    assert not report.ok
    assert "fix: apt-get install -y busybox-static" in report.render()
    assert report.to_dict()["host"][0]["ok"] is False


def test_docker_checks_stop_at_a_missing_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sandboxer.backends.docker import DockerBackend
    from sandboxer.backends.docker import _doctor as docker_doctor

    socket = tmp_path / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    checks = {c.name: c for c in docker_doctor.diagnose(DockerBackend)}
    assert not checks["reachable: docker socket"].ok
    assert checks["reachable: docker socket"].fix == (
        f"nohup dockerd -H unix://{socket} >/var/log/dockerd.log 2>&1 &"
    )
    assert "reachable: dockerd answers" not in checks  # nothing to ask without a socket
    assert checks["reachable: docker socket"].column is CheckColumn.REACHABLE


def test_docker_checks_for_a_remote_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxer.backends.docker import DockerBackend
    from sandboxer.backends.docker import _doctor as docker_doctor

    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")  # nothing listens on port 1
    [check] = docker_doctor.diagnose(DockerBackend)
    assert check.name == "reachable: dockerd answers" and not check.ok
    assert check.fix is not None and "DOCKER_HOST" in check.fix
