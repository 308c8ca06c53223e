"""The OCI runtime choice (`SandboxSpec(runtime=...)`) on real engines.

Docker runs runc and, once scripts/setup-engines.sh has registered it, crun. Debian 12's
crun (1.8.1) refuses a hybrid cgroup layout whose v2 hierarchy holds a controller, as this
host's does (hugetlb): there the adapter must refuse `runtime="crun"` before launching,
with crun's own words; on a host crun accepts, the sandbox must run under crun with the
hardened profile intact. Which one this host is, the test reads from the host itself.
Incus and libvirt run no OCI runtime of the caller's choosing: they refuse any.
"""

from __future__ import annotations

import time
from pathlib import Path

import docker
import pytest

import sandboxer
from sandboxer import SandboxSpec, UnsupportedFeature
from sandboxer._labels import SESSION, session_id
from sandboxer._launch import make_plan
from sandboxer.backends.docker import DockerBackend

_UNIFIED = Path("/sys/fs/cgroup/unified/cgroup.controllers")


def _crun_refuses_this_host() -> bool:
    """crun's rule: a hybrid layout (cgroup v2 beside v1) with any controller on v2."""
    return _UNIFIED.exists() and bool(_UNIFIED.read_text().split())


def _session_containers(client: docker.DockerClient) -> set[str]:
    found = client.api.containers(all=True, filters={"label": f"{SESSION}={session_id()}"})
    return {c["Id"] for c in found}


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    return docker.from_env()


def test_the_setup_registered_crun_with_dockerd(client: docker.DockerClient) -> None:
    runtimes = client.info()["Runtimes"]
    assert runtimes.get("crun", {}).get("path") == "/usr/bin/crun", runtimes
    assert Path("/usr/bin/crun").is_file()


def test_crun_runs_where_the_host_lets_it_else_is_refused_first(
    client: docker.DockerClient,
) -> None:
    before = _session_containers(client)
    backend = DockerBackend()  # a fresh instance: its first crun plan runs the trial
    try:
        started = time.monotonic()
        verdict = backend.check(make_plan(SandboxSpec(runtime="crun")))
        print(f"crun check with its trial: {time.monotonic() - started:.3f}s")
    finally:
        backend.close()
    assert _session_containers(client) == before  # the trial left nothing behind
    if _crun_refuses_this_host():
        assert len(verdict.refusals) == 1, verdict.refusals
        assert "OCI runtime 'crun'" in verdict.refusals[0]
        assert "cgroups in hybrid mode not supported" in verdict.refusals[0]
        with pytest.raises(UnsupportedFeature, match="cannot start a container on this host"):
            sandboxer.launch(backend="docker", runtime="crun")
        assert _session_containers(client) == before
    else:
        assert verdict.ok, verdict.refusals
        with sandboxer.launch(backend="docker", runtime="crun") as sandbox:
            assert client.api.inspect_container(sandbox.id)["HostConfig"]["Runtime"] == "crun"
            status = sandbox.exec(["cat", "/proc/self/status"]).stdout.decode()
            assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
            assert "CapEff:\t0000000000000000" in status


def test_a_runtime_dockerd_lacks_is_refused_naming_the_fix() -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        sandboxer.launch(backend="docker", runtime="runsc")
    assert "not registered with dockerd" in str(caught.value)
    assert "runsc install" in str(caught.value)


def test_runc_asked_by_name_is_what_docker_runs_and_others_refuse(
    backend: str, client: docker.DockerClient
) -> None:
    if backend != "docker":
        with pytest.raises(UnsupportedFeature, match="runs no OCI runtime of the caller's"):
            sandboxer.launch(backend=backend, runtime="runc")
        return
    with sandboxer.launch(backend=backend, runtime="runc") as sandbox:
        assert client.api.inspect_container(sandbox.id)["HostConfig"]["Runtime"] == "runc"
        assert sandbox.exec(["true"]).exit_code == 0
