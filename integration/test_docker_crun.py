"""The whole engine contract on Docker with crun as the OCI runtime (the set-up registers
it, and makes the hybrid cgroup layout one crun accepts: scripts/setup/cgroups.sh)."""

from __future__ import annotations

from typing import Any

import docker
import pytest

from sandboxer import Sandbox
from sandboxer.testing.contract import EngineContract


class TestContractOnCrun(EngineContract):
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> str:
        return "docker"

    @pytest.fixture(scope="class")
    @classmethod
    def launch_fields(cls, image: str) -> dict[str, Any]:
        return {"image": image, "runtime": "crun"}

    def test_the_sandbox_runs_under_crun(self, shared: Sandbox) -> None:
        # The engine's record of which runtime made it: the contract proves the rest.
        found = docker.from_env().api.inspect_container(shared.id)
        assert found["HostConfig"]["Runtime"] == "crun"
