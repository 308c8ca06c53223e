"""The Docker adapter's pure parts: error mapping and plan -> container config (no engine)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import docker.errors
import pytest
import requests

import sandboxer
from sandboxer import Mount, PortMapping, SandboxSpec
from sandboxer._launch import make_plan
from sandboxer.backends.docker._config import KEEPALIVE, create_arguments
from sandboxer.backends.docker._errors import MAPPING, translate


def _docker_exception_classes() -> list[type[BaseException]]:
    return [
        cls
        for _, cls in inspect.getmembers(docker.errors, inspect.isclass)
        if issubclass(cls, BaseException) and cls.__module__.startswith("docker")
    ]


@pytest.mark.parametrize("cls", _docker_exception_classes(), ids=lambda c: c.__name__)
def test_every_docker_exception_is_mapped(cls: type[BaseException]) -> None:
    assert any(issubclass(cls, source) for source, _ in MAPPING), cls


def test_mapping_targets() -> None:
    response = requests.Response()
    response.status_code = 404
    assert isinstance(translate(docker.errors.NotFound("x", response)), sandboxer.SandboxNotFound)
    missing = translate(docker.errors.ImageNotFound("x", response))
    assert isinstance(missing, sandboxer.ImageNotFound)
    conflict = requests.Response()
    conflict.status_code = 409
    error = docker.errors.APIError("Conflict", conflict, explanation="name is already in use")
    assert isinstance(translate(error), sandboxer.SandboxExists)
    down = translate(requests.exceptions.ConnectionError("refused"))
    assert isinstance(down, sandboxer.BackendUnavailable) and down.fix


def test_hardened_plan_becomes_a_locked_down_container(tmp_path: Path) -> None:
    plan = make_plan(
        SandboxSpec(
            env={"A": "1"},
            workdir="/tmp",
            mounts=[Mount(str(tmp_path), "/data", read_only=True)],
            ports=[PortMapping(8080, 18080)],
            resources={"cpus": 0.5},
        )
    )
    args = create_arguments(plan, "img:1", "bridge")
    assert args["command"] == list(KEEPALIVE)
    assert args["cap_drop"] == ["ALL"]
    assert args["read_only"] is True
    assert args["user"] == "1000:1000"
    assert args["pids_limit"] == 128 and args["mem_limit"] == args["memswap_limit"] == 256 << 20
    assert args["nano_cpus"] == 500_000_000
    [mount] = args["mounts"]
    assert (mount["Source"], mount["Target"], mount["Type"]) == (str(tmp_path), "/data", "bind")
    assert mount["ReadOnly"] is True
    assert args["ports"] == {"8080/tcp": ("127.0.0.1", 18080)}
    assert "no-new-privileges:true" in args["security_opt"]
    seccomp = next(o for o in args["security_opt"] if o.startswith("seccomp="))
    assert json.loads(seccomp.removeprefix("seccomp="))["defaultAction"] == "SCMP_ACT_ERRNO"
    assert args["labels"]["sandboxer.managed"] == "true"
    assert "/tmp" in args["tmpfs"]


def test_default_profile_adds_no_controls() -> None:
    args = create_arguments(make_plan(SandboxSpec(profile="default")), "img", "bridge")
    for key in ("cap_drop", "security_opt", "pids_limit", "mem_limit", "tmpfs"):
        assert key not in args
    assert args["read_only"] is False
