"""The OCI runtime choice (`SandboxSpec(runtime=...)`, profile `security.runtime`): its
validation, the plan, the decider, the selector, Docker's mapping and its host probe
(a fake dockerd API: no engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import docker.errors
import pytest
import requests

import sandboxer
from sandboxer import InvalidSpec, SandboxSpec, UnsupportedFeature, load_profile
from sandboxer._backend import Availability
from sandboxer._decide import decide, static_enforcement
from sandboxer._launch import make_plan
from sandboxer._profiles import RUNTIMES
from sandboxer._selector import rank
from sandboxer.backends.docker import DockerBackend
from sandboxer.backends.docker._config import create_arguments
from sandboxer.backends.docker._images import ReadyImage
from sandboxer.backends.docker._runtimes import (
    ENGINE_NAMES,
    FIXES,
    DockerRuntimes,
    describe,
    engine_name,
)
from sandboxer.backends.incus import IncusBackend
from sandboxer.backends.libvirt import LibvirtBackend
from sandboxer.cli import build_parser
from sandboxer.cli._run_argv import canonical_argv
from sandboxer.cli._spec import spec_from
from sandboxer.images import ImageConfig

pytestmark = pytest.mark.usefixtures("only_fake_engines")
BUILTIN = ReadyImage("sandboxer/minimal:3", ImageConfig(), builtin=True)
HYBRID = "OCI runtime create failed: cgroups in hybrid mode not supported: unknown"


# the spec and the profile ------------------------------------------------------------
@pytest.mark.parametrize("runtime", [None, *RUNTIMES])
def test_a_known_runtime_or_none_is_taken(runtime: str | None) -> None:
    assert SandboxSpec(runtime=runtime).runtime == runtime


@pytest.mark.parametrize("runtime", ["youki", "", "CRUN", 3, ["crun"]])
def test_any_other_runtime_is_invalid_and_names_the_field(runtime: Any) -> None:
    with pytest.raises(InvalidSpec) as caught:
        SandboxSpec(runtime=runtime)
    assert caught.value.field == "runtime" and "runc, crun, runsc, kata" in str(caught.value)


def test_a_profile_file_sets_the_runtime(tmp_path: Path) -> None:
    path = tmp_path / "fast.toml"
    path.write_text('[security]\nruntime = "crun"\n')
    assert load_profile(str(path)).runtime == "crun"
    path.write_text('[security]\nruntime = "youki"\n')
    with pytest.raises(InvalidSpec) as caught:
        load_profile(str(path))
    assert caught.value.field == "profile.security.runtime"


@pytest.mark.parametrize("name", ["hardened", "default", "strict"])
def test_built_in_profiles_leave_the_engine_default(name: str) -> None:
    assert load_profile(name).runtime is None


def test_the_plan_takes_the_specs_runtime_else_the_profiles() -> None:
    crun = load_profile("hardened").derive("crun", runtime="crun")
    assert make_plan(SandboxSpec()).runtime is None
    assert make_plan(SandboxSpec(profile=crun)).runtime == "crun"
    assert make_plan(SandboxSpec(profile=crun, runtime="runc")).runtime == "runc"


def test_the_cli_takes_runtime_docker_style() -> None:
    parser = build_parser()
    args = parser.parse_args(canonical_argv(parser, ["run", "--runtime", "crun", "--", "true"]))
    assert spec_from(args).runtime == "crun"
    args = parser.parse_args(canonical_argv(parser, ["run", "--runtime", "youki", "--", "true"]))
    with pytest.raises(InvalidSpec, match="runtime"):
        spec_from(args)


# the decider and the selector --------------------------------------------------------
@pytest.mark.parametrize("cls", [IncusBackend, LibvirtBackend], ids=lambda c: c.name)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_engines_that_run_no_oci_runtime_refuse_any(cls: Any, runtime: str) -> None:
    plan = make_plan(SandboxSpec(runtime=runtime, profile="default"))
    caps = cls.capabilities
    verdict = decide(plan, caps, static_enforcement(plan, caps), cls.refusals(plan))
    assert any("runs no OCI runtime of the caller's choosing" in r for r in verdict.refusals)


def test_docker_declares_every_runtime_and_refuses_none_by_class() -> None:
    assert DockerBackend.capabilities.runtimes == frozenset(RUNTIMES) == frozenset(ENGINE_NAMES)
    plan = make_plan(SandboxSpec(runtime="kata"))
    caps = DockerBackend.capabilities
    assert decide(plan, caps, static_enforcement(plan, caps), DockerBackend.refusals(plan)).ok


def test_a_runtime_outside_the_declared_ones_is_refused_with_those_listed() -> None:
    plan = make_plan(SandboxSpec(runtime="kata"))
    caps = DockerBackend.capabilities
    narrowed = attrs.evolve(caps, runtimes={"runc", "crun"})
    verdict = decide(plan, narrowed, static_enforcement(plan, narrowed))
    assert verdict.refusals == ("cannot run OCI runtime 'kata' (only crun, runc)",)


def test_the_selector_sends_a_runtime_to_the_app_container_engine() -> None:
    classes = {"docker": DockerBackend, "incus": IncusBackend, "libvirt": LibvirtBackend}
    caps = {name: cls.capabilities for name, cls in classes.items()}
    up = {name: Availability(True) for name in classes}
    spec = SandboxSpec(runtime="crun", requirements={"kind": "system"})
    with pytest.raises(UnsupportedFeature, match="runs no OCI runtime"):
        rank(spec, caps, up, classes=classes)
    assert rank(SandboxSpec(runtime="crun"), caps, up, classes=classes).backend == "docker"


# Docker: names, create, doctor -------------------------------------------------------
def test_each_runtime_maps_to_the_first_name_dockerd_has() -> None:
    assert engine_name("runc", {"runc", "io.containerd.runc.v2"}) == "runc"
    assert engine_name("crun", {"runc"}) is None
    assert engine_name("runsc", {"runc", "runsc"}) == "runsc"
    # Kata's guides register it under several names; gVisor's and Kata's are untested here.
    assert engine_name("kata", {"io.containerd.kata.v2", "kata-runtime"}) == "kata-runtime"
    assert engine_name("kata", {"runc"}) is None
    assert set(FIXES) == set(RUNTIMES)


def test_create_passes_dockerds_name_and_nothing_for_the_default() -> None:
    plan = make_plan(SandboxSpec(runtime="crun"))
    assert create_arguments(plan, BUILTIN, None, runtime="crun")["runtime"] == "crun"
    assert "runtime" not in create_arguments(make_plan(SandboxSpec()), BUILTIN, None)


def test_doctor_lists_dockerds_runtimes_and_its_default() -> None:
    info = {"Runtimes": {"runc": {}, "crun": {"path": "/usr/bin/crun"}}, "DefaultRuntime": "runc"}
    assert describe(info) == "crun, runc (default)"


# Docker: the host probe --------------------------------------------------------------
class _Api:
    """The dockerd calls DockerRuntimes makes, recorded; `start` fails with `failure`."""

    def __init__(self, registered: list[str], failure: str | None = None, code: int = 0) -> None:
        self.registered = registered
        self.failure = failure
        self.code = code
        self.calls: list[str] = []
        self.created: dict[str, Any] = {}

    def info(self) -> dict[str, Any]:
        self.calls.append("info")
        return {"Runtimes": {n: {} for n in self.registered}, "DefaultRuntime": "runc"}

    def create_host_config(self, **config: Any) -> dict[str, Any]:
        return config

    def create_container(self, image: str, command: list[str], **rest: Any) -> dict[str, str]:
        self.calls.append("create")
        self.created = {"image": image, "command": command, **rest}
        return {"Id": "c1"}

    def start(self, container: str) -> None:
        self.calls.append("start")
        if self.failure is not None:
            response = requests.Response()
            response.status_code = 500
            raise docker.errors.APIError("500", response, explanation=self.failure)

    def wait(self, container: str, timeout: float) -> dict[str, int]:
        return {"StatusCode": self.code}

    def remove_container(self, container: str, force: bool) -> None:
        self.calls.append(f"remove {container}")


class _Images:
    def ready(self, image: str, policy: Any) -> ReadyImage:
        assert image == "sandboxer/minimal"
        return BUILTIN


def _runtimes(api: _Api) -> DockerRuntimes:
    return DockerRuntimes(api, _Images())  # type: ignore[arg-type]


def test_an_unregistered_runtime_is_refused_naming_the_fix() -> None:
    api = _Api(["runc"])
    refusal = _runtimes(api).refusal("crun")
    assert refusal is not None and "not registered with dockerd (it has runc)" in refusal
    assert FIXES["crun"] in refusal and "scripts/setup-engines.sh docker" in refusal
    assert api.calls == ["info"]  # no container tried


def test_no_runtime_and_dockerds_default_cost_no_trial() -> None:
    api = _Api(["runc", "crun"])
    runtimes = _runtimes(api)
    assert runtimes.refusal(None) is None and api.calls == []
    assert runtimes.refusal("runc") is None and api.calls == ["info"]


def test_a_runtime_that_cannot_start_a_container_is_refused_with_the_engines_words() -> None:
    api = _Api(["runc", "crun"], failure=HYBRID)
    runtimes = _runtimes(api)
    refusal = runtimes.refusal("crun")
    assert refusal is not None and "cannot start a container on this host" in refusal
    assert HYBRID in refusal
    assert api.calls == ["info", "create", "start", "remove c1"]  # the trial left nothing
    assert api.created["host_config"] == {"runtime": "crun", "network_mode": "none"}
    assert sandboxer.backend.MANAGED in api.created["labels"]  # gc's, should we die
    assert runtimes.refusal("crun") == refusal and len(api.calls) == 4  # once per instance


def test_a_runtime_whose_trial_fails_its_command_is_refused() -> None:
    refusal = _runtimes(_Api(["runc", "crun"], code=127)).refusal("crun")
    assert refusal is not None and "`true` exited with 127" in refusal


def test_a_runtime_that_runs_the_trial_is_taken_once() -> None:
    api = _Api(["runc", "crun"])
    runtimes = _runtimes(api)
    assert runtimes.refusal("crun") is None and runtimes.refusal("crun") is None
    assert api.calls == ["info", "create", "start", "remove c1"]
    assert runtimes.engine_name("crun") == "crun" and runtimes.engine_name(None) is None


def test_docker_check_adds_the_hosts_refusal_to_the_verdict() -> None:
    backend = object.__new__(DockerBackend)
    backend._runtimes = _runtimes(_Api(["runc", "crun"], failure=HYBRID))
    verdict = backend.check(make_plan(SandboxSpec(runtime="crun")))
    assert not verdict.ok and HYBRID in verdict.refusals[-1]
    assert backend.check(make_plan(SandboxSpec(runtime="runc"))).ok
